// The tensor-core operations of kernels/cuda/tensor_core.cuh for the
// emulator (device_shims.h), fragment for fragment: each lane hands in its
// registers as the PTX ISA lays them out, the warp's tiles are assembled
// from all 32 lanes, and each lane gets back its own part of the result,
// so that a kernel mistaking the layout gets wrong numbers here as on the
// device. Products of fp16 values are exact in fp32 and summed in fp32, in
// k order (the tensor cores' order is their own).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "tests/cuda_emu/emulator.h"

namespace attnserve::emu {

// ldmatrix .x4 from dynamic shared memory: each lane's row address, then
// each lane's four pairs read as the device's lanes get them.
inline void LoadMatrices(uint32_t (&r)[4], const __half* row, bool transposed) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(row);
  const unsigned char* shared = DynamicShared();
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0 || bytes < shared || bytes + 16 > shared + DynamicSharedBytes()) {
    Fail(absl::StrCat("ldmatrix: a row at ", absl::Hex(reinterpret_cast<uintptr_t>(row)),
                      " is not 16 aligned bytes of the block's shared memory"));
  }
  const uint64_t* slots = WarpExchange(0xffffffffu, reinterpret_cast<uintptr_t>(row));
  const int lane = Lane(), group = lane / 4, pair = 2 * (lane % 4);
  for (int i = 0; i < 4; ++i) {
    r[i] = 0;
    for (int k = 0; k < 2; ++k) {
      const auto* source = reinterpret_cast<const uint16_t*>(slots[8 * i + (transposed ? pair + k : group)]);
      r[i] |= static_cast<uint32_t>(source[transposed ? group : pair + k]) << (16 * k);
    }
  }
}

// d += a · b for the warp's 16×16 A and 16×8 B (mma.m16n8k16, fp32 sums).
inline void MmaF16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Fragments {
    uint32_t a[4];
    uint32_t b[2];
  };
  const Fragments mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  // Every lane's fragments stay on its stack until the second exchange,
  // after which no lane reads another's.
  const uint64_t* slots = WarpExchange(0xffffffffu, reinterpret_cast<uintptr_t>(&mine));
  const Fragments* lanes[32];
  for (int i = 0; i < 32; ++i) lanes[i] = reinterpret_cast<const Fragments*>(slots[i]);
  auto half_at = [](uint32_t pair, int k) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(pair >> (16 * (k % 2)))));
  };
  // A[row][k] is in lane 4 · (row % 8) + (k % 8) / 2, register
  // (row / 8) + 2 · (k / 8); B[k][n] in lane 4 · n + (k % 8) / 2, register
  // k / 8.
  auto a_at = [&](int row, int k) { return half_at(lanes[4 * (row % 8) + (k % 8) / 2]->a[row / 8 + 2 * (k / 8)], k); };
  auto b_at = [&](int k, int n) { return half_at(lanes[4 * n + (k % 8) / 2]->b[k / 8], k); };
  const int lane = Lane(), group = lane / 4, pair = 2 * (lane % 4);
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = group + 8 * (i / 2), col = pair + i % 2;
    float sum = d[i];
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    out[i] = sum;
  }
  WarpExchange(0xffffffffu, 0);
  std::memcpy(d, out, sizeof(out));
}

}  // namespace attnserve::emu
