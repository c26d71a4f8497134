// ACT in the serving engine on the default model: the whole prompt is
// prefilled at once over the step budget, the key sets survive preemption
// and are shared by a request's completions but never across requests, and
// scoring finds them before it scores.
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/engine_policy_fixture.h"

namespace attnserve {
namespace {

constexpr const char* kPrompt =
    "The lighthouse keeper kept a log of every ship that passed the rocks: the date, the hour, the flag, "
    "the weather and the state of the sea. In the winter of that year the log grew thin, for few ships "
    "dared the strait, and the keeper wrote instead about the birds, the ice on the rail and the long "
    "nights. When spring came, the first ship to pass was";

PolicySpec Act() {
  PolicySpec spec;
  spec.act = ActSpec{};
  return spec;
}

TEST_F(EnginePolicyTest, ActPrefillsItsWholePromptOverTheStepBudget) {
  const PolicySpec spec = Act();
  const GenerationRequest r = Greedy(kPrompt, 16, &spec);
  ASSERT_GT(r.prompt_ids.size(), 64u);
  EngineOptions small_steps;
  small_steps.max_num_batched_tokens = 32;
  std::unique_ptr<Engine> engine = MakeEngine(small_steps);
  Collector c;
  ASSERT_TRUE(engine->Submit(r, c.stream).ok());
  const GenerationDelta out = c.Wait()[0];
  EXPECT_EQ(out.token_ids, BackendGreedy(r, 16));
  // ACT changes this continuation: the comparison is not dense against dense.
  EXPECT_NE(out.token_ids, BackendGreedy(Greedy(kPrompt, 16), 16));
}

TEST_F(EnginePolicyTest, ActSequencesSurvivePreemptionWithTheirKeySets) {
  std::vector<std::string> prompts;
  for (int i = 0; i < 3; ++i) prompts.push_back(std::string(kPrompt) + " number " + std::to_string(i + 1) + ", a");
  ExpectSurvivesPreemption(Act(), prompts, 100, 24);  // 3 sequences need ~36 pages
}

TEST_F(EnginePolicyTest, ActKeySetsAreSharedByCompletionsOnly) {
  std::unique_ptr<Engine> engine = MakeEngine();
  const PolicySpec spec = Act();
  GenerationRequest r = Greedy(kPrompt, 6, &spec);
  r.sampling.n = 3;
  Collector c;
  ASSERT_TRUE(engine->Submit(r, c.stream).ok());
  const std::vector<GenerationDelta> out = c.Wait();
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].cached_prompt_tokens, 0);
  for (int i = 1; i < 3; ++i) {
    EXPECT_GT(out[i].cached_prompt_tokens, 0);
    EXPECT_EQ(out[i].token_ids, out[0].token_ids) << "greedy completions of one prompt and one S";
  }
  // Another request with the same prompt and policy finds its own sets.
  Collector again;
  ASSERT_TRUE(engine->Submit(Greedy(kPrompt, 6, &spec), again.stream).ok());
  const GenerationDelta second = again.Wait()[0];
  EXPECT_EQ(second.cached_prompt_tokens, 0);
  EXPECT_EQ(second.token_ids, out[0].token_ids);
}

// Scoring runs the text whole for the key sets, then again in chunks for
// the logits: the same logprobs as one backend step over the whole text.
TEST_F(EnginePolicyTest, ActScoreFindsTheKeySetsFirst) {
  EngineOptions chunks;
  chunks.max_num_batched_tokens = 32;
  std::unique_ptr<Engine> engine = MakeEngine(chunks);
  const std::vector<int32_t> text = model_->tokenizer->Encode(kPrompt, true, false);
  const int32_t n = static_cast<int32_t>(text.size());
  const std::shared_ptr<const AttentionPlan> plan = Plan(Act(), n);
  const absl::StatusOr<ScoreResult> act = engine->Score(text, plan, absl::InfiniteFuture());
  ASSERT_TRUE(act.ok()) << act.status();
  const ScoreResult dense = engine->Score(text, nullptr, absl::InfiniteFuture()).value();
  EXPECT_NE(act->perplexity, dense.perplexity);

  const ModelConfig& c = model_->config;
  const int32_t pages = n / 16 + 1;
  KvCachePool pool = KvCachePool::Create({c.n_layers, c.n_kv_heads, c.head_dim, 16}, pages).value();
  PageAllocator allocator(pages);
  std::unique_ptr<CpuBackend> backend = CpuBackend::Create(*model_, pool, {2, 512}).value();
  PageTable table;
  ASSERT_TRUE(ReservePages(table, n, 16, allocator).ok());
  ActKeySets sets(*plan);
  SequenceStep step;
  step.pages = &table;
  step.tokens = text;
  step.logits = LogitsWanted::kAll;
  step.attention = plan.get();
  step.act_sets = &sets;
  std::vector<float> logits;
  ASSERT_TRUE(backend->Forward({&step, 1}, logits).ok());
  EXPECT_TRUE(sets.complete());
  std::vector<float> row(c.vocab_size);
  for (int32_t i = 0; i + 1 < n; ++i) {
    LogSoftmax(std::span<const float>(&logits[static_cast<size_t>(i) * c.vocab_size], c.vocab_size), row);
    EXPECT_NEAR(act->token_logprobs[i + 1], row[text[i + 1]], 1e-4) << "token " << i + 1;
  }
  // The stats are published after the step that answered.
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

}  // namespace
}  // namespace attnserve
