// The serving engine on the real default model: batching, chunked prefill,
// preemption, prefix caching, cancellation and scoring keep outputs exact.
#include "engine/core/engine.h"
#include "engine/kv/kv_cache.h"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/engine_test_util.h"

namespace attnserve {
namespace {

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(ModelPath())) return;
    absl::StatusOr<std::unique_ptr<Model>> m = LoadModel(ModelPath());
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "model missing: run scripts/setup.sh (" << ModelPath() << ")";
  }

  std::unique_ptr<Engine> MakeEngine(EngineOptions options = {}) {
    absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(*model_, options, nullptr);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  GenerationRequest Greedy(const std::string& prompt, int32_t max_tokens) {
    GenerationRequest r;
    r.prompt_ids = model_->tokenizer->Encode(prompt, true, true);
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    r.arrival = absl::Now();
    return r;
  }

  static Model* model_;
};
Model* EngineTest::model_ = nullptr;

TEST_F(EngineTest, GreedyOutputIsTheSameAloneAndInABatchOfSixteen) {
  const std::vector<std::string> prompts = {
      "The capital of France is", "Once upon a time", "def add(a, b):", "The three primary colors are",
      "Water boils at", "In 1969,", "My favourite food is", "The quick brown fox",
      "Photosynthesis is", "The largest planet", "import os\n", "Dear Sir,",
      "1, 2, 3,", "Rome was", "To make tea,", "Machine learning"};
  std::unique_ptr<Engine> engine = MakeEngine();
  std::vector<std::vector<int32_t>> alone;
  for (const std::string& p : prompts) alone.push_back(RunAlone(*engine, Greedy(p, 24)));
  std::vector<std::unique_ptr<Collector>> batch;
  for (const std::string& p : prompts) {
    batch.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(Greedy(p, 24), batch.back()->stream).ok());
  }
  int same = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<GenerationDelta> out = batch[i]->Wait();
    EXPECT_EQ(out[0].completion_tokens, 24);
    EXPECT_EQ(out[0].finish_reason, FinishReason::kLength);
    same += out[0].token_ids == alone[i] ? 1 : 0;
  }
  // Batched matmuls sum in the same order per row, so outputs are identical.
  EXPECT_EQ(same, static_cast<int>(prompts.size()));
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

TEST_F(EngineTest, PreemptionUnderATinyKvCacheKeepsEveryOutput) {
  std::unique_ptr<Engine> reference = MakeEngine();
  EngineOptions tiny;
  tiny.page_size = 16;
  tiny.kv_cache_bytes = 20 * KvCachePool::PageBytes({30, 3, 64, 16});  // 20 pages; 8 sequences need ~32
  tiny.max_num_batched_tokens = 64;
  std::unique_ptr<Engine> engine = MakeEngine(tiny);
  std::vector<std::unique_ptr<Collector>> runs;
  std::vector<std::string> prompts;
  std::vector<GenerationDelta> alone;
  for (int i = 0; i < 8; ++i) {
    prompts.push_back("Story number " + std::to_string(i) + ": once upon a time there was a");
    GenerationRequest r = Greedy(prompts.back(), 48);
    r.sampling.logprobs = true;
    r.sampling.top_logprobs = 2;
    Collector c;
    ASSERT_TRUE(reference->Submit(std::move(r), c.stream).ok());
    alone.push_back(c.Wait()[0]);
  }
  // All at once, so that together they need more pages than there are.
  for (const std::string& prompt : prompts) {
    runs.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(Greedy(prompt, 48), runs.back()->stream).ok());
  }
  for (int i = 0; i < 8; ++i) {
    ExpectSameOrNearTie(runs[i]->Wait()[0].token_ids, alone[i], 0.05f, "sequence " + std::to_string(i));
  }
  EXPECT_GT(engine->stats().preemptions_total, 0);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

TEST_F(EngineTest, PrefixCacheHitsAreReportedAndDoNotChangeOutput) {
  std::unique_ptr<Engine> engine = MakeEngine();
  const std::string prompt =
      "<|im_start|>system\nYou are a helpful assistant who answers briefly and precisely.<|im_end|>\n"
      "<|im_start|>user\nWhat is the tallest mountain on Earth?<|im_end|>\n<|im_start|>assistant\n";
  Collector first, second;
  ASSERT_TRUE(engine->Submit(Greedy(prompt, 16), first.stream).ok());
  const GenerationDelta a = first.Wait()[0];
  ASSERT_TRUE(engine->Submit(Greedy(prompt, 16), second.stream).ok());
  const GenerationDelta b = second.Wait()[0];
  EXPECT_EQ(a.cached_prompt_tokens, 0);
  EXPECT_GT(b.cached_prompt_tokens, 0);
  EXPECT_EQ(b.cached_prompt_tokens % 16, 0);
  EXPECT_EQ(a.token_ids, b.token_ids);
}

TEST_F(EngineTest, NCompletionsShareThePromptAndFollowTheirSeeds) {
  std::unique_ptr<Engine> engine = MakeEngine();
  // Longer than a page, so that the siblings find full pages to share.
  GenerationRequest r = Greedy("Here is a list of short words that rhyme with cat, one per line, without numbering:", 12);
  r.sampling.n = 3;
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 5;
  Collector c;
  ASSERT_TRUE(engine->Submit(r, c.stream).ok());
  const std::vector<GenerationDelta> out = c.Wait();
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].cached_prompt_tokens, 0);
  EXPECT_GT(out[1].cached_prompt_tokens, 0);  // the prompt's full pages came from completion 0
  Collector again;
  ASSERT_TRUE(engine->Submit(r, again.stream).ok());
  const std::vector<GenerationDelta> repeat = again.Wait();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i].token_ids, repeat[i].token_ids) << "completion " << i;
  EXPECT_NE(out[0].token_ids, out[1].token_ids);
}

TEST_F(EngineTest, AbortAndDeadlineFreeThePages) {
  std::unique_ptr<Engine> engine = MakeEngine();
  Collector cancelled, expired;
  absl::StatusOr<uint64_t> handle = engine->Submit(Greedy("Tell me a long story.", 2000), cancelled.stream);
  ASSERT_TRUE(handle.ok());
  GenerationRequest r = Greedy("Another long story.", 2000);
  r.deadline = absl::Now() + absl::Milliseconds(300);
  ASSERT_TRUE(engine->Submit(r, expired.stream).ok());
  absl::SleepFor(absl::Milliseconds(200));
  engine->Abort(*handle, absl::CancelledError("client went away"));
  const GenerationDelta a = cancelled.Wait()[0];
  const GenerationDelta b = expired.Wait()[0];
  EXPECT_EQ(a.finish_reason, FinishReason::kAbort);
  EXPECT_EQ(a.error.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(b.finish_reason, FinishReason::kAbort);
  EXPECT_EQ(b.error.code(), absl::StatusCode::kDeadlineExceeded);
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
  EXPECT_EQ(engine->stats().running, 0);
}

TEST_F(EngineTest, ScoreMatchesTheGreedyChoiceAndRejectsBadInput) {
  std::unique_ptr<Engine> engine = MakeEngine();
  GenerationRequest r = Greedy("The capital of France is", 8);
  const std::vector<int32_t> generated = RunAlone(*engine, r);
  std::vector<int32_t> text = r.prompt_ids;
  text.insert(text.end(), generated.begin(), generated.end());
  absl::StatusOr<ScoreResult> score = engine->Score(text, nullptr, absl::InfiniteFuture());
  ASSERT_TRUE(score.ok()) << score.status();
  ASSERT_EQ(score->token_logprobs.size(), text.size());
  EXPECT_GT(score->perplexity, 1.0);
  // Greedy tokens are the most likely: their logprob is at least log(1/vocab).
  for (size_t i = r.prompt_ids.size(); i < text.size(); ++i) EXPECT_GT(score->token_logprobs[i], -10.0f);
  EXPECT_EQ(engine->Score({1}, nullptr, absl::InfiniteFuture()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Score({1, 999999}, nullptr, absl::InfiniteFuture()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EngineTest, DrainFinishesRunningWorkAndRefusesNewRequests) {
  std::unique_ptr<Engine> engine = MakeEngine();
  Collector c;
  ASSERT_TRUE(engine->Submit(Greedy("Hello", 8), c.stream).ok());
  engine->Drain(absl::Seconds(30));
  EXPECT_EQ(c.Wait()[0].finish_reason, FinishReason::kLength);
  Collector late;
  EXPECT_EQ(engine->Submit(Greedy("Hello", 8), late.stream).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, BackendChoiceIsCheckedAndAutoFallsBackToTheCpu) {
  EngineOptions options;
  options.backend = "tpu";
  absl::StatusOr<std::unique_ptr<Engine>> bad = Engine::Create(*model_, options, nullptr);
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("backend: \"tpu\""));

  options.backend = "auto";
  std::unique_ptr<Engine> automatic = MakeEngine(options);
  ASSERT_NE(automatic, nullptr);
  EXPECT_FALSE(automatic->device().empty());
  if (automatic->backend_name() == "cpu") {
    // No usable GPU here: asking for cuda says why, and starts nothing.
    options.backend = "cuda";
    absl::StatusOr<std::unique_ptr<Engine>> cuda = Engine::Create(*model_, options, nullptr);
    EXPECT_TRUE(cuda.status().code() == absl::StatusCode::kUnavailable ||
                cuda.status().code() == absl::StatusCode::kUnimplemented)
        << cuda.status();
    EXPECT_THAT(std::string(cuda.status().message()), ::testing::HasSubstr("backend: cuda, but"));
  } else {
    EXPECT_EQ(automatic->backend_name(), "cuda");
  }
}

}  // namespace
}  // namespace attnserve
