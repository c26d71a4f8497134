// CpuBackend's step outputs: rows of logits in step order, and picks
// (kLastPick) drawn from the row the step would have returned, with that row
// left out.
#include "engine/backend/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "engine/sampling/sampler.h"
#include "tests/unit/engine_test_util.h"

namespace attnserve {
namespace {

TEST(CpuBackendTest, PickStepsReturnTheTokenInsteadOfTheRow) {
  if (!std::filesystem::exists(ModelPath())) GTEST_SKIP() << "model missing: run scripts/setup.sh";
  const std::unique_ptr<Model> model = LoadModel(ModelPath()).value();
  const ModelConfig& c = model->config;
  KvCachePool pool = KvCachePool::Create({c.n_layers, c.n_kv_heads, c.head_dim, 16}, 8).value();
  PageAllocator allocator(8);
  std::unique_ptr<CpuBackend> backend = CpuBackend::Create(*model, pool, {2, 64}).value();
  std::vector<PageTable> tables(3);
  for (PageTable& t : tables) ASSERT_TRUE(ReservePages(t, 32, 16, allocator).ok());
  const std::vector<std::vector<int32_t>> prompts = {{1, 504, 2113, 30}, {1, 28, 17, 2056, 9}, {1, 940, 77}};

  // Each alone with its last row's logits.
  std::vector<std::vector<float>> rows;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SequenceStep st;
    st.pages = &tables[i];
    st.tokens = prompts[i];
    std::vector<float> logits;
    ASSERT_TRUE(backend->Forward({&st, 1}, logits).ok());
    rows.push_back(logits);
  }
  // Together: all rows of the first, the greedy pick of the second, a
  // sampled pick of the third.
  std::vector<SequenceStep> steps(3);
  TokenPick greedy, sampled;
  sampled.temperature = 0.8f;
  sampled.top_k = 40;
  sampled.uniform = 0.37;
  sampled.logprobs = true;
  sampled.top_logprobs = 3;
  // The greedy pick with its largest logit masked and a bias elsewhere.
  const int32_t top = ArgMax(rows[1]);
  const std::vector<LogitEdit> edits = {{top, 0.0f, 1.0f, 0.0f, 0.0f, true}, {7, 0.5f}};
  greedy.edits = edits.data();
  greedy.n_edits = 2;
  for (size_t i = 0; i < prompts.size(); ++i) {
    steps[i].pages = &tables[i];
    steps[i].tokens = prompts[i];
  }
  steps[0].logits = LogitsWanted::kAll;
  steps[1].logits = LogitsWanted::kLastPick;
  steps[1].pick = &greedy;
  steps[2].logits = LogitsWanted::kLastPick;
  steps[2].pick = &sampled;
  std::vector<float> logits;
  ASSERT_TRUE(backend->Forward(steps, logits).ok());
  const size_t vocab = c.vocab_size;
  ASSERT_EQ(logits.size(), prompts[0].size() * vocab);
  std::vector<float> edited = rows[1];
  for (const LogitEdit& e : edits) edited[e.token] = EditLogit(edited[e.token], e);
  EXPECT_EQ(greedy.token, ArgMax(edited));
  EXPECT_NE(greedy.token, top);
  EXPECT_EQ(sampled.token, PickToken(rows[2], sampled));
  TokenPick want = sampled;
  PickLogprobs(rows[2], want);
  EXPECT_NEAR(sampled.logprob, want.logprob, 1e-4f);
  EXPECT_EQ(sampled.n_top, 3);
  // The batch rounds as the single sequences do.
  const std::span<const float> first_last(&logits[(prompts[0].size() - 1) * vocab], vocab);
  EXPECT_EQ(ArgMax(first_last), ArgMax(rows[0]));

  steps[1].pick = nullptr;
  EXPECT_EQ(backend->Forward(steps, logits).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnserve
