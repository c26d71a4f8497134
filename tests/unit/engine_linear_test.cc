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

}  // namespace
}  // namespace attnserve
