// PrefillAttentionCuda against the CPU reference (PagedAttentionReference,
// in double): the last queries of a sequence as a prefill chunk in tiles,
// over odd lengths and chunk sizes, both head dims, 1 to 8 query heads per
// KV head, every policy hook but Quest's (its queries go to the decode
// kernel), and tiles of several sequences with different policies in one
// launch; on the GPU, and on the host under the emulator (every machine,
// fewer sizes: its tensor-core products are slow). GPU cases skip without a
// device.
#include "tests/cuda_emu/device_shims.h"  // first: the kernel compiles for the emulator
#include "kernels/cuda/paged_prefill_kernels.cuh"

#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "tests/cuda/attention_cases.h"

namespace attnserve {
namespace {

constexpr float kTolerance = 2e-3f;

// Runs every query of every case in tiles of one launch; checks each
// case's outputs against its reference and that every lse was written.
absl::Status Run(KernelBackend backend, const PrefillAttentionArgs& a) {
  if (backend == KernelBackend::kEmulator) return RunPrefillAttention(a, emu::Launcher{});
  if (absl::Status s = PrefillAttentionCuda(a, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

void ExpectTilesMatch(KernelBackend backend, std::vector<Case>& cases) {
  KernelMemory memory(backend);
  KernelBatch batch{memory};
  std::vector<DecodeSequence> entries;
  std::vector<PrefillTile> tiles;
  std::vector<float> q, sink_q;
  bool any_sink_q = false;
  for (Case& c : cases) any_sink_q |= !c.sink_q.empty();
  const Problem& first = *cases[0].pr;
  const int32_t per_tile = PrefillQueriesPerTile(first.group);
  for (Case& c : cases) {
    batch.Add(c);
    const DecodeSequence templ = batch.seqs.back();
    for (int i = 0; i < c.pr->n_queries; ++i) {
      DecodeSequence e = templ;
      e.query_pos = c.pr->positions[i];
      e.row = static_cast<int32_t>(entries.size());
      if (i % per_tile == 0) tiles.push_back({e.row, 0});
      ++tiles.back().n_queries;
      entries.push_back(e);
    }
    q.insert(q.end(), c.pr->q.begin(), c.pr->q.end());
    const std::vector<float>& sq = c.sink_q.empty() ? c.pr->q : c.sink_q;
    sink_q.insert(sink_q.end(), sq.begin(), sq.end());
  }
  PrefillAttentionArgs a;
  a.entries = memory.Upload(entries);
  a.tiles = memory.Upload(tiles);
  a.n_tiles = static_cast<int32_t>(tiles.size());
  a.q = memory.Upload(q);
  a.sink_q = any_sink_q ? memory.Upload(sink_q) : nullptr;
  a.out = memory.Upload(std::vector<float>(q.size(), NAN));
  a.lse = memory.Upload(std::vector<float>(entries.size() * first.n_q_heads(), NAN));
  a.n_q_heads = first.n_q_heads();
  a.n_kv_heads = first.n_kv_heads;
  a.head_dim = first.head_dim;
  const absl::Status s = Run(backend, a);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<float> got = memory.Download(a.out, q.size());
  const std::vector<float> lse_got = memory.Download(a.lse, entries.size() * first.n_q_heads());
  size_t at = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<float> want = cases[i].Reference();
    const std::vector<float> mine(got.begin() + at, got.begin() + at + want.size());
    EXPECT_LT(testing_attention::MaxAbsDiff(mine, want), kTolerance) << "sequence " << i;
    at += want.size();
  }
  for (float x : lse_got) EXPECT_FALSE(std::isnan(x));
}

using SizeParam = std::tuple<KernelBackend, int, int, int, int>;  // backend, tokens, queries, head_dim, group

class PrefillAttentionCudaTest : public ::testing::TestWithParam<SizeParam> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(std::get<0>(GetParam())); }
};

TEST_P(PrefillAttentionCudaTest, EveryPolicyMatchesTheReference) {
  const auto [backend, num_tokens, n_queries, head_dim, group] = GetParam();
  uint32_t seed = 1;
  for (const auto& [name, apply] : Policies()) {
    if (name == "quest") continue;
    SCOPED_TRACE(name);
    std::vector<Case> cases(1);
    cases[0].pr = std::make_unique<Problem>(16, head_dim, 2, group, num_tokens, std::min(n_queries, num_tokens), seed);
    std::mt19937 rng(seed++);
    apply(cases[0], rng);
    ExpectTilesMatch(backend, cases);
  }
}

std::string SizeName(const ::testing::TestParamInfo<SizeParam>& info) {
  const auto [backend, num_tokens, n_queries, head_dim, group] = info.param;
  return absl::StrCat(KernelBackendName({backend, 0}), "_", num_tokens, "_q", n_queries, "_d", head_dim, "_g", group);
}

INSTANTIATE_TEST_SUITE_P(Sizes, PrefillAttentionCudaTest,
                         ::testing::Combine(::testing::Values(KernelBackend::kGpu), ::testing::Values(1, 65, 300, 1031),
                                            ::testing::Values(7, 64, 130), ::testing::Values(64, 128),
                                            ::testing::Values(1, 3, 8)),
                         SizeName);
INSTANTIATE_TEST_SUITE_P(EmulatedSizes, PrefillAttentionCudaTest,
                         ::testing::Combine(::testing::Values(KernelBackend::kEmulator), ::testing::Values(1, 65, 300),
                                            ::testing::Values(7, 40), ::testing::Values(64, 128),
                                            ::testing::Values(1, 3, 8)),
                         SizeName);
// Full tiles and a part one of a KV head's single query head.
INSTANTIATE_TEST_SUITE_P(EmulatedTiles, PrefillAttentionCudaTest,
                         ::testing::Combine(::testing::Values(KernelBackend::kEmulator), ::testing::Values(300),
                                            ::testing::Values(130), ::testing::Values(64), ::testing::Values(1)),
                         SizeName);

class PrefillAttentionCudaBatchTest : public ::testing::TestWithParam<KernelBackend> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(GetParam()); }
};

// One launch, tiles of sequences of different policies and lengths.
TEST_P(PrefillAttentionCudaBatchTest, MixedPoliciesInOneLaunch) {
  std::vector<Case> cases;
  uint32_t seed = 100;
  int length = 5;
  for (const auto& [name, apply] : Policies()) {
    if (name == "quest") continue;
    cases.emplace_back();
    cases.back().pr = std::make_unique<Problem>(16, 64, 2, 3, length, std::min(length, 19), seed);
    std::mt19937 rng(seed++);
    apply(cases.back(), rng);
    length = length * 2 + 7;
  }
  ExpectTilesMatch(GetParam(), cases);
}

INSTANTIATE_TEST_SUITE_P(Backends, PrefillAttentionCudaBatchTest,
                         ::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator), KernelBackendName);

TEST(PrefillAttentionCudaArgsTest, ShapesTheKernelDoesNotCoverAreRejected) {
  PrefillAttentionArgs a;
  a.n_tiles = 1;
  a.n_q_heads = 34;
  a.n_kv_heads = 2;  // 17 query heads per KV head
  a.head_dim = 64;
  EXPECT_EQ(PrefillAttentionCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.n_q_heads = 8;
  EXPECT_EQ(PrefillAttentionCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);  // null pointers
  a.n_tiles = 0;
  EXPECT_TRUE(PrefillAttentionCuda(a, nullptr).ok());
  EXPECT_EQ(PrefillQueriesPerTile(1), 64);
  EXPECT_EQ(PrefillQueriesPerTile(3), 21);
  EXPECT_EQ(PrefillQueriesPerTile(16), 4);
}

}  // namespace
}  // namespace attnserve
