// Attention policies in the serving engine on the real default model: mixed
// batches, streaming's bounded KV memory, prefix-cache salts, preemption,
// scoring and the policy metrics.
#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/engine.h"
#include "engine/metrics/metrics.h"
#include "engine/policy/planner.h"
#include "engine/sampling/sampler.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/unit/engine_policy_fixture.h"

namespace attnserve {
namespace {

// Eight policies, each alone and then all at once in one engine: the
// batch runs them in the same steps with per-sequence parameters.
TEST_F(EnginePolicyTest, EightPoliciesInOneBatchGiveEachRequestsOwnTokens) {
  const std::string prompt =
      "The following is a short report about the history of the city of Rome, its founding, its kings, "
      "the republic and the empire. Rome was";
  const ModelConfig& c = model_->config;
  std::vector<std::unique_ptr<PolicySpec>> specs;
  specs.push_back(nullptr);  // no plan: dense
  auto add = [&](auto edit) {
    specs.push_back(std::make_unique<PolicySpec>());
    edit(*specs.back());
  };
  add([](PolicySpec& p) { p.sink = Original(4, 16); });
  add([](PolicySpec& p) { p.virtual_sink = VirtualSinkSpec{0.0f, {}}; });
  add([&](PolicySpec& p) {
    p.virtual_sink = VirtualSinkSpec{0.0f, std::vector<float>(c.n_layers * c.n_heads)};
    for (size_t i = 0; i < p.virtual_sink->per_head_logits.size(); ++i) {
      p.virtual_sink->per_head_logits[i] = static_cast<float>(i % 7) - 2.0f;
    }
  });
  add([](PolicySpec& p) { p.zero_tuning = ZeroTuningSpec{0.2f, {2, 3, 4, 5, 6, 7, 8}, {}}; });
  add([&](PolicySpec& p) {
    p.temperature = TemperatureSpec{std::vector<float>(c.n_layers * c.n_heads)};
    for (size_t i = 0; i < p.temperature->factors.size(); ++i) p.temperature->factors[i] = i % 2 ? 1.3f : 0.8f;
  });
  add([](PolicySpec& p) { p.emphasis = EmphasisSpec{{{3, 12, SpanUnit::kTokens}}, 0.05f, {}, {}}; });
  add([](PolicySpec& p) {
    p.sink = Original(2, 24);
    p.virtual_sink = VirtualSinkSpec{1.0f, {}};
    p.zero_tuning = ZeroTuningSpec{3.0f, {}, {0, 1, 2}};
    p.emphasis = EmphasisSpec{{{18, 26, SpanUnit::kTokens}}, std::nullopt, {10, 11, 12}, {}};
  });
  ASSERT_EQ(specs.size(), 8u);

  // Without prefix caching every run prefills the whole prompt, so only
  // the company in the batch differs between the runs.
  EngineOptions options;
  options.prefix_caching = false;
  std::unique_ptr<Engine> engine = MakeEngine(options);
  std::vector<std::vector<int32_t>> alone;
  for (const auto& spec : specs) alone.push_back(RunAlone(*engine, Greedy(prompt, 24, spec.get())));
  std::vector<std::unique_ptr<Collector>> batch;
  for (const auto& spec : specs) {
    batch.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(Greedy(prompt, 24, spec.get()), batch.back()->stream).ok());
  }
  int differ_from_dense = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::vector<GenerationDelta> out = batch[i]->Wait();
    EXPECT_EQ(out[0].token_ids, alone[i]) << "policy " << i;
    EXPECT_EQ(out[0].completion_tokens, 24);
    differ_from_dense += alone[i] != alone[0] ? 1 : 0;
  }
  // The policies are applied: most change what greedy decoding picks.
  EXPECT_GE(differ_from_dense, 5);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

// StreamingLLM with absolute positions: pages behind the window go back to
// the pool as the generation runs, so its KV stays flat; and the tokens are
// those of the same policy computed with every page kept.
TEST_F(EnginePolicyTest, StreamingKeepsKvPagesFlatOverALongGeneration) {
  Metrics metrics;
  std::unique_ptr<Engine> engine = MakeEngine({}, &metrics);
  PolicySpec spec;
  spec.sink = Original(4, 64);
  constexpr int32_t kTokens = 600;
  GenerationRequest r = Greedy("Once upon a time, in a land far away,", kTokens, &spec);
  const std::vector<int32_t> expected = BackendGreedy(r, kTokens);
  const auto [out, max_pages] = RunWatchingPages(*engine, r);
  EXPECT_EQ(out.completion_tokens, kTokens);
  EXPECT_EQ(out.token_ids, expected);
  // The sink page, the window's 64 tokens over up to 5 pages, the page
  // being written; a dense sequence would end with 38.
  EXPECT_GT(max_pages, 0);
  EXPECT_LE(max_pages, 7);
  const double evicted = CounterValue(metrics, "attnserve_kv_evicted_pages_total");
  EXPECT_GE(evicted, (kTokens + 10 - 64) / 16 - 2);
  const double read = CounterValue(metrics, "attnserve_attention_pages_read_total");
  const double visible = CounterValue(metrics, "attnserve_attention_pages_visible_total");
  EXPECT_GT(read, 0.0);
  EXPECT_LT(read, visible / 2);
  EXPECT_EQ(CounterValue(metrics, "attnserve_requests_total",
                         {{"mode", "dense"}, {"sink", "streaming"}, {"calibration", "none"}}),
            1.0);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

// StreamingLLM with positions inside the cache: as flat as with original
// positions, the same tokens as the backend alone with every page kept (over
// the first 1000, to keep the test short), and the same as original
// positions until the window first fills.
TEST_F(EnginePolicyTest, StreamingCacheKeepsKvPagesFlatOverALongGeneration) {
  std::unique_ptr<Engine> engine = MakeEngine();
  PolicySpec spec;
  spec.sink = Cache(4, 64);
  constexpr int32_t kTokens = 3000;
  GenerationRequest r = Greedy("Once upon a time, in a land far away,", kTokens, &spec);
  const std::vector<int32_t> expected = BackendGreedy(r, 1000);
  const auto [out, max_pages] = RunWatchingPages(*engine, r);
  EXPECT_EQ(out.finish_reason, FinishReason::kLength);
  EXPECT_EQ(out.completion_tokens, kTokens);
  ASSERT_EQ(out.token_ids.size(), static_cast<size_t>(kTokens));
  EXPECT_EQ(std::vector<int32_t>(out.token_ids.begin(), out.token_ids.begin() + expected.size()), expected);
  EXPECT_GT(max_pages, 0);
  EXPECT_LE(max_pages, 7);  // a dense sequence would end with 189
  EXPECT_EQ(engine->stats().kv_pages_used, 0);

  PolicySpec original;
  original.sink = Original(4, 64);
  const std::vector<int32_t> with_original = RunAlone(*engine, Greedy("Once upon a time, in a land far away,", 200, &original));
  const size_t same_until = 4 + 64 - r.prompt_ids.size();  // the first query past sinks + window
  ASSERT_GT(same_until, 0u);
  EXPECT_EQ(std::vector<int32_t>(with_original.begin(), with_original.begin() + same_until),
            std::vector<int32_t>(expected.begin(), expected.begin() + same_until));
  EXPECT_NE(with_original, std::vector<int32_t>(expected.begin(), expected.begin() + 200));
}

// The default model with its context cut to 256 tokens: positions=CACHE
// generates and scores past it, with RoPE past the context in double; other
// policies still stop at it.
TEST_F(EnginePolicyTest, StreamingCacheRunsPastTheModelsContext) {
  struct ContextOverride {
    explicit ContextOverride(int32_t c) : saved(model_->config.context_length) { model_->config.context_length = c; }
    ~ContextOverride() { model_->config.context_length = saved; }
    int32_t saved;
  };
  const std::string prompt = "The history of the printing press begins";
  constexpr int32_t kTokens = 600;
  PolicySpec cache, original;
  cache.sink = Cache(4, 64);
  original.sink = Original(4, 64);
  const std::vector<int32_t> text = model_->tokenizer->Encode(
      std::string(40, ' ') + "It was the best of times, it was the worst of times, it was the age of wisdom, it "
      "was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity. " +
      "It was the season of Light, it was the season of Darkness, it was the spring of hope, it was the winter of "
      "despair, we had everything before us, we had nothing before us, we were all going direct to Heaven, we "
      "were all going direct the other way.", true, false);
  std::vector<int32_t> long_text;
  while (long_text.size() < 400) long_text.insert(long_text.end(), text.begin(), text.end());
  std::vector<int32_t> below_context;
  double score_below = 0.0;
  {
    // Below the 8192 context: ops' float RoPE everywhere.
    std::unique_ptr<Engine> engine = MakeEngine();
    below_context = RunAlone(*engine, Greedy(prompt, kTokens, &cache));
    score_below = engine->Score(long_text, Plan(cache, 400), absl::InfiniteFuture()).value().perplexity;
  }
  ContextOverride context(256);
  Metrics metrics;
  std::unique_ptr<Engine> engine = MakeEngine({}, &metrics);
  Collector c;
  ASSERT_TRUE(engine->Submit(Greedy(prompt, kTokens, &cache), c.stream).ok());
  const GenerationDelta out = c.Wait()[0];
  EXPECT_EQ(out.finish_reason, FinishReason::kLength);
  EXPECT_EQ(out.completion_tokens, kTokens);
  // Positions past 256 take RoPE in double, the float path's rotation to
  // within its rounding there: greedy decoding follows the same path.
  EXPECT_EQ(out.token_ids, below_context);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
  const absl::StatusOr<ScoreResult> score = engine->Score(long_text, Plan(cache, 400), absl::InfiniteFuture());
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_NEAR(score->perplexity, score_below, 1e-3 * score_below);

  // Original positions and dense stop at the context.
  Collector refused;
  EXPECT_EQ(engine->Submit(Greedy(prompt, kTokens, &original), refused.stream).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Score(long_text, Plan(original, 400), absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kInvalidArgument);
  GenerationRequest dense = Greedy(prompt, 200);
  dense.sampling.max_tokens = 256 - static_cast<int32_t>(dense.prompt_ids.size());
  Collector d;
  ASSERT_TRUE(engine->Submit(dense, d.stream).ok());
  const GenerationDelta dense_out = d.Wait()[0];
  EXPECT_EQ(dense_out.finish_reason, FinishReason::kLength);
  EXPECT_EQ(static_cast<int32_t>(dense.prompt_ids.size()) + dense_out.completion_tokens, 256);
}

TEST_F(EnginePolicyTest, PrefixPagesAreSharedOnlyByEqualPrefillPolicies) {
  std::unique_ptr<Engine> engine = MakeEngine();
  const std::string prompt =
      "<|im_start|>system\nYou are a helpful assistant who answers briefly and precisely.<|im_end|>\n"
      "<|im_start|>user\nWhat is the longest river in Africa?<|im_end|>\n<|im_start|>assistant\n";
  auto run = [&](const PolicySpec* spec) {
    Collector c;
    EXPECT_TRUE(engine->Submit(Greedy(prompt, 4, spec), c.stream).ok());
    return c.Wait()[0];
  };
  PolicySpec gamma2, gamma3, dense, neutral;
  gamma2.zero_tuning = ZeroTuningSpec{2.0f, {}, {}};
  gamma3.zero_tuning = ZeroTuningSpec{3.0f, {}, {}};
  // alpha 1 biases nothing: the plan computes what dense computes.
  neutral.emphasis = EmphasisSpec{{{0, 4, SpanUnit::kTokens}}, 1.0f, {}, {}};
  const GenerationDelta first = run(&gamma2);
  const GenerationDelta same = run(&gamma2);
  EXPECT_EQ(first.cached_prompt_tokens, 0);
  EXPECT_GT(same.cached_prompt_tokens, 0);
  EXPECT_EQ(same.token_ids, first.token_ids);
  EXPECT_EQ(run(&gamma3).cached_prompt_tokens, 0);
  EXPECT_EQ(run(nullptr).cached_prompt_tokens, 0);
  EXPECT_GT(run(&dense).cached_prompt_tokens, 0);
  EXPECT_GT(run(&neutral).cached_prompt_tokens, 0);
  PolicySpec streaming;
  streaming.sink = Original(4, 16);
  EXPECT_EQ(run(&streaming).cached_prompt_tokens, 0);
}

TEST_F(EnginePolicyTest, StreamingSequencesSurvivePreemptionUnderATinyKvCache) {
  PolicySpec spec;
  spec.sink = Original(4, 32);
  std::vector<std::string> prompts;
  for (int i = 0; i < 4; ++i) prompts.push_back("Chapter " + std::to_string(i + 1) + ". The storm had passed, and the");
  ExpectSurvivesPreemption(spec, prompts, 120, 10);  // 4 sequences need ~20 pages
}

TEST_F(EnginePolicyTest, CompletionsOfAStreamingRequestShareItsPrompt) {
  Metrics metrics;
  std::unique_ptr<Engine> engine = MakeEngine({}, &metrics);
  PolicySpec spec;
  spec.sink = Original(4, 16);
  GenerationRequest r = Greedy(
      "Here is a list of short words that rhyme with cat, one per line, without numbering, followed by a "
      "list of words that rhyme with dog, then a list of words that rhyme with fish, and at the very end a "
      "list of words that rhyme with bird:",
      12, &spec);
  ASSERT_GT(r.prompt_ids.size(), 52u);  // so that completion 0 releases prompt pages
  r.sampling.n = 3;
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 11;
  Collector c;
  ASSERT_TRUE(engine->Submit(r, c.stream).ok());
  const std::vector<GenerationDelta> out = c.Wait();
  ASSERT_EQ(out.size(), 3u);
  // Completion 0 released the prompt's middle pages, but the prefix cache
  // still holds them for its siblings.
  EXPECT_EQ(out[0].cached_prompt_tokens, 0);
  EXPECT_EQ(out[1].cached_prompt_tokens, (r.prompt_ids.size() - 1) / 16 * 16);
  for (const GenerationDelta& d : out) EXPECT_EQ(d.completion_tokens, 12);
  EXPECT_GT(CounterValue(metrics, "attnserve_kv_evicted_pages_total"), 0.0);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

TEST_F(EnginePolicyTest, ScoreUsesThePlan) {
  std::unique_ptr<Engine> engine = MakeEngine();
  const std::vector<int32_t> text = model_->tokenizer->Encode(
      "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
      "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light.",
      true, false);
  const double dense = engine->Score(text, nullptr, absl::InfiniteFuture()).value().perplexity;
  PolicySpec none;
  EXPECT_EQ(engine->Score(text, Plan(none, static_cast<int32_t>(text.size())), absl::InfiniteFuture())
                .value()
                .perplexity,
            dense);
  PolicySpec spec;
  spec.sink = Original(1, 8);
  const double streaming =
      engine->Score(text, Plan(spec, static_cast<int32_t>(text.size())), absl::InfiniteFuture()).value().perplexity;
  EXPECT_NE(streaming, dense);
  EXPECT_GT(streaming, 1.0);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

TEST_F(EnginePolicyTest, PlansForAnotherModelAreRefused) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ModelConfig other = model_->config;
  other.n_layers = 2;
  PromptInfo prompt;
  prompt.num_tokens = 4;
  const auto plan = PlanAttention(PolicySpec{}, other, prompt).value();
  GenerationRequest r = Greedy("Hello", 2);
  r.attention = plan;
  Collector c;
  EXPECT_EQ(engine->Submit(r, c.stream).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Score({1, 2, 3}, plan, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnserve
