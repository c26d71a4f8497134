// StagingArena: arrays staged for a buffer elsewhere point into that buffer
// once the staged bytes are copied there.
#include "engine/backend/cuda/staging_arena.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace attnserve {
namespace {

struct Entry {
  const int32_t* table;
  double weight;
};

TEST(StagingArenaTest, PointersResolveAfterTheCopy) {
  alignas(64) static uint8_t target[4096];
  StagingArena arena;
  for (int round = 0; round < 2; ++round) {  // a Reset starts over
    arena.Reset(target);
    const std::vector<uint8_t> odd = {1, 2, 3};
    const uint8_t* odd_at = arena.Append(odd);
    const std::vector<int32_t> table = {7, 8, 9, round};
    const int32_t* table_at = arena.Append(table);
    const std::vector<Entry> entries = {{table_at, 0.5}, {table_at + 2, 1.5}};
    const Entry* entries_at = arena.Append(entries);
    const int32_t* empty_at = arena.Append(std::vector<int32_t>{});
    ASSERT_LE(arena.size(), sizeof(target));
    std::memcpy(target, arena.data(), arena.size());

    EXPECT_EQ(reinterpret_cast<uintptr_t>(table_at) % 16, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(entries_at) % 16, 0u);
    EXPECT_EQ(odd_at[2], 3);
    EXPECT_EQ(entries_at[0].table[0], 7);
    EXPECT_EQ(entries_at[1].table[1], round);
    EXPECT_EQ(entries_at[1].weight, 1.5);
    EXPECT_GE(reinterpret_cast<const uint8_t*>(empty_at), reinterpret_cast<const uint8_t*>(entries_at + 2));
  }
}

TEST(StagingArenaTest, RoomWrittenInPlaceSurvivesGrowth) {
  std::vector<uint8_t> target(1 << 20);
  StagingArena arena;
  arena.Reset(target.data());
  int32_t* at = arena.Allocate<int32_t>(5);
  int32_t* staged = arena.Staged(at);
  for (int i = 0; i < 5; ++i) staged[i] = 10 + i;
  // Appends past the first capacity move the staged bytes; what was written
  // stays at its place.
  const std::vector<double> big(100000, 0.25);
  const double* big_at = arena.Append(big);
  ASSERT_LE(arena.size(), target.size());
  std::memcpy(target.data(), arena.data(), arena.size());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(at[i], 10 + i);
  EXPECT_EQ(big_at[99999], 0.25);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big_at) % 16, 0u);
}

}  // namespace
}  // namespace attnserve
