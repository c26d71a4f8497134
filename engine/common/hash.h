// A 64-bit mixing function for hash chains and fingerprints.
#pragma once

#include <cstdint>

namespace attnserve {

// splitmix64's finaliser: every input bit reaches every output bit, so that
// chained keys of different inputs collide with probability ~2^-64.
inline uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace attnserve
