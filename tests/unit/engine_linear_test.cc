// The linear mode in the serving engine on the default model: a window that
// covers the context is dense exactly; a short one folds keys into a state
// of constant size while the KV pages stay those of sinks + window, and the
// engine (chunked prefill, batching) gives the backend's own result.
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/engine_policy_fixture.h"

namespace attnserve {
namespace {

constexpr const char* kPrompt =
    "The committee met on the first Monday of every month in the back room of the library, where the radiator "
    "hissed and the chairs did not match. The minutes of the March meeting record three items:";

PolicySpec Linear(uint32_t window, uint32_t sinks) {
  PolicySpec spec;
  spec.mode = LinearSpec{window, sinks};
  return spec;
}

TEST_F(EnginePolicyTest, LinearWithAWindowOverTheContextIsDense) { ExpectSameAsDense(kPrompt, Linear(8192, 4), 24); }

TEST_F(EnginePolicyTest, LinearKeepsSinksAndWindowPagesOverALongGeneration) {
  constexpr int32_t kTokens = 200;
  EngineOptions small_steps;
  small_steps.max_num_batched_tokens = 16;  // the prompt in chunks, state updated between them
  std::unique_ptr<Engine> engine = MakeEngine(small_steps);
  const PolicySpec linear = Linear(32, 4);
  const GenerationRequest r = Greedy(kPrompt, kTokens, &linear);
  const auto [out, max_pages] = RunWatchingPages(*engine, r);
  EXPECT_EQ(out.completion_tokens, kTokens);
  EXPECT_EQ(out.token_ids, BackendGreedy(r, kTokens));
  EXPECT_NE(out.token_ids, BackendGreedy(Greedy(kPrompt, kTokens), kTokens));
  // 4 sinks (1 page) and 32 window keys over a 16-token step (at most 4
  // pages): a dense sequence would end with 15.
  EXPECT_GT(max_pages, 0);
  EXPECT_LE(max_pages, 5);
  // Its state: per layer and KV head, (1 + 64 + 64 * 65 / 2) x (64 + 1) floats.
  const ModelConfig& cfg = model_->config;
  EXPECT_EQ(LinearAttentionState(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim).bytes(),
            int64_t{30} * 3 * 2145 * 65 * 4);
}

// A recomputed sequence folds its keys into a state started afresh.
TEST_F(EnginePolicyTest, LinearSequencesSurvivePreemption) {
  const std::vector<std::string> prompts = {kPrompt, std::string(kPrompt) + " first,", "The minutes record:"};
  ExpectSurvivesPreemption(Linear(32, 4), prompts, 40, 8);  // each holds ~5 pages
}

// With --linear-state-memory for one state, linear sequences run one at a
// time: the others go back to waiting (counted as preemptions) and give the
// same tokens as alone.
TEST_F(EnginePolicyTest, LinearSequencesWaitForStateMemory) {
  const ModelConfig& c = model_->config;
  const int64_t state = LinearAttentionState(c.n_layers, c.n_kv_heads, c.head_dim).bytes();
  EngineOptions one_state;
  one_state.linear_state_bytes = state + state / 2;
  std::unique_ptr<Engine> engine = MakeEngine(one_state), reference = MakeEngine();
  const PolicySpec linear = Linear(32, 4);
  const std::vector<std::string> prompts = {kPrompt, "The minutes record:", "Three items were"};
  std::vector<std::unique_ptr<Collector>> runs;
  for (const std::string& p : prompts) {
    runs.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(Greedy(p, 12, &linear), runs.back()->stream).ok());
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const GenerationDelta out = runs[i]->Wait()[0];
    ASSERT_TRUE(out.error.ok()) << out.error;
    EXPECT_EQ(out.token_ids, RunAlone(*reference, Greedy(prompts[i], 12, &linear))) << prompts[i];
  }
  EXPECT_GE(engine->stats().preemptions_total, 2);
}

// A state larger than the whole budget fails its request alone.
TEST_F(EnginePolicyTest, LinearStateLargerThanItsBudgetFailsAlone) {
  const ModelConfig& c = model_->config;
  EngineOptions half_a_state;
  half_a_state.linear_state_bytes = LinearAttentionState(c.n_layers, c.n_kv_heads, c.head_dim).bytes() / 2;
  std::unique_ptr<Engine> engine = MakeEngine(half_a_state);
  const PolicySpec linear = Linear(32, 4);
  Collector dense, too_large;
  ASSERT_TRUE(engine->Submit(Greedy(kPrompt, 8), dense.stream).ok());
  ASSERT_TRUE(engine->Submit(Greedy(kPrompt, 8, &linear), too_large.stream).ok());
  const GenerationDelta failed = too_large.Wait()[0];
  EXPECT_EQ(failed.error.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(failed.error.message().find("--linear-state-memory"), std::string_view::npos) << failed.error;
  const GenerationDelta done = dense.Wait()[0];
  EXPECT_TRUE(done.error.ok()) << done.error;
  EXPECT_EQ(done.token_ids.size(), 8u);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

}  // namespace
}  // namespace attnserve
