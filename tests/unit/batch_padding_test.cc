// BatchPadding: decode steps brought to a few batch sizes, whose padding
// rows write only the pool's scratch pages, so that steps of 5 and of 7
// sequences launch the same kernels (one CUDA graph).
#include "engine/backend/cuda/batch_padding.h"

#include <gtest/gtest.h>

#include <array>
#include <vector>

#include "tests/unit/step_metadata_fixture.h"

namespace attnserve {
namespace {

TEST(PaddedBatchSizeTest, PowersOfTwoThenMultiplesOfEight) {
  const std::vector<std::array<int32_t, 2>> cases = {{1, 1},   {2, 2},   {3, 4},   {4, 4},   {5, 8},
                                                      {8, 8},   {9, 16},  {13, 16}, {17, 24}, {256, 256},
                                                      {257, 264}};
  for (const auto& [n, padded] : cases) EXPECT_EQ(PaddedBatchSize(n), padded) << n;
  for (int32_t n = 1; n <= 1024; ++n) {
    EXPECT_GE(PaddedBatchSize(n), n);
    EXPECT_LE(PaddedBatchSize(n) - n, kMaxBatchPadding);
  }
}

class BatchPaddingTest : public StepMetadataFixture {
 protected:
  BatchPaddingTest() : padding_(pool_), tables_(9), picks_(9) {
    for (int32_t i = 0; i < 9; ++i) tables_[i] = Table({i}, 3 + i);
  }

  // n sequences decoding their next token, picked on the device.
  std::vector<SequenceStep> Decode(int32_t n) {
    std::vector<SequenceStep> steps(n);
    for (int32_t i = 0; i < n; ++i) {
      steps[i].pages = &tables_[i];
      steps[i].tokens = std::span<const int32_t>(token_);
      steps[i].first_pos = tables_[i].num_tokens;
      steps[i].logits = LogitsWanted::kLastPick;
      steps[i].pick = &picks_[i];
    }
    return steps;
  }

  BatchPadding padding_;
  std::vector<PageTable> tables_;
  std::vector<TokenPick> picks_;
  const std::array<int32_t, 1> token_ = {7};
};

TEST_F(BatchPaddingTest, PaddingRowsDecodeIntoScratchPagesOnly) {
  const std::vector<SequenceStep> steps = Decode(5);
  const std::span<const SequenceStep> padded = padding_.Pad(steps);
  ASSERT_EQ(padded.size(), 8u);
  for (int32_t i = 0; i < 5; ++i) EXPECT_EQ(padded[i].pages, steps[i].pages);
  for (int32_t i = 5; i < 8; ++i) {
    const SequenceStep& st = padded[i];
    ASSERT_EQ(st.pages->pages.size(), 1u);
    EXPECT_EQ(st.pages->pages[0], pool_.scratch_page(i - 5));
    EXPECT_GE(st.pages->pages[0], pool_.num_pages());
    EXPECT_EQ(st.first_pos, 0);
    EXPECT_EQ(st.logits, LogitsWanted::kLastPick);
    EXPECT_EQ(st.attention, nullptr);
    ASSERT_NE(st.pick, nullptr);
    EXPECT_EQ(st.pick->temperature, 0.0f);
  }
  EXPECT_TRUE(CheckSteps(c_, 16, padded).ok());
  // The rows the kernels see: each padding row writes and reads its own
  // scratch page, at position 0.
  const StepMetadata m = Build(padded);
  EXPECT_EQ(m.n_seqs, 8);
  EXPECT_TRUE(GraphReplayable(m));
  for (int32_t i = 5; i < 8; ++i) {
    EXPECT_EQ(m.append[i].first_pos, 0);
    EXPECT_EQ(m.append[i].n_tokens, 1);
    const DecodeSequence d = AtLayer(m.decode[i], 1);
    EXPECT_EQ(d.kv.num_tokens, 1);
    EXPECT_EQ(d.query_pos, 0);
    EXPECT_EQ(d.kv.keys, pool_.keys(1));
    EXPECT_EQ(d.kv.Slice(0, 0), pool_.scratch_page(i - 5) * c_.n_kv_heads);
  }
}

TEST_F(BatchPaddingTest, StepsOfOnePaddedSizeLaunchAlike) {
  const std::vector<SequenceStep> five = Decode(5), seven = Decode(7), nine = Decode(9);
  const std::vector<uintptr_t> signature = LaunchSignature(Build(padding_.Pad(five)));
  EXPECT_EQ(LaunchSignature(Build(padding_.Pad(seven))), signature);
  EXPECT_NE(LaunchSignature(Build(padding_.Pad(nine))), signature);
  EXPECT_EQ(padding_.Pad(Decode(8)).size(), 8u);
  EXPECT_EQ(padding_.Pad(Decode(2)).size(), 2u);
}

TEST_F(BatchPaddingTest, OtherStepsAreNotPadded) {
  std::vector<SequenceStep> returned = Decode(3);
  returned[1].logits = LogitsWanted::kLast;  // its row comes back whole
  EXPECT_EQ(padding_.Pad(returned).size(), 3u);
  std::vector<SequenceStep> prefill = Decode(3);
  const std::array<int32_t, 2> two = {1, 2};
  prefill[2].tokens = two;
  EXPECT_EQ(padding_.Pad(prefill).size(), 3u);
  std::vector<SequenceStep> quiet = Decode(3);
  quiet[0].logits = LogitsWanted::kNone;
  EXPECT_EQ(padding_.Pad(quiet).size(), 4u);
  // A pool without scratch pages pads nothing.
  const KvCachePool bare = KvCachePool::Create({c_.n_layers, c_.n_kv_heads, c_.head_dim, 16}, kPages).value();
  BatchPadding none(bare);
  EXPECT_EQ(none.Pad(Decode(5)).size(), 5u);
}

}  // namespace
}  // namespace attnserve
