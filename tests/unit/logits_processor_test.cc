#include "engine/sampling/logits_processor.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <set>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnserve {
namespace {

using ::testing::ElementsAre;
using ::testing::StartsWith;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

std::vector<float> Applied(const LogitsProcessor& p, std::vector<float> row) {
  p.Apply(row);
  return row;
}

TEST(LogitsProcessorTest, LogitBiasAddsToItsTokens) {
  SamplingOptions o;
  o.logit_bias = {{0, 0.5f}, {3, -4.0f}, {0, 0.25f}, {9, 1.0f}};  // token 9 is off the row
  const LogitsProcessor p(o, {}, {});
  EXPECT_THAT(Applied(p, {1.0f, 2.0f, 3.0f, 4.0f}), ElementsAre(1.75f, 2.0f, 3.0f, 0.0f));
}

TEST(LogitsProcessorTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOnce) {
  SamplingOptions o;
  o.repetition_penalty = 2.0f;
  const std::vector<int32_t> prompt = {0, 2, 4, 0, 0};
  LogitsProcessor p(o, prompt, {});
  EXPECT_THAT(Applied(p, {2.0f, 1.0f, -2.0f, 3.0f, 0.0f}), ElementsAre(1.0f, 1.0f, -4.0f, 3.0f, 0.0f));
  // Output tokens count too, and a token seen many times is penalised once.
  p.Accept(3);
  p.Accept(3);
  p.Accept(0);
  EXPECT_THAT(Applied(p, {2.0f, 1.0f, -2.0f, 3.0f, 0.0f}), ElementsAre(1.0f, 1.0f, -4.0f, 1.5f, 0.0f));
}

TEST(LogitsProcessorTest, PresenceAndFrequencyPenaltiesCountOutputTokensOnly) {
  SamplingOptions o;
  o.frequency_penalty = 0.5f;
  o.presence_penalty = 0.25f;
  const std::vector<int32_t> prompt = {0, 3};
  LogitsProcessor p(o, prompt, {});
  EXPECT_THAT(Applied(p, {1.0f, 1.0f, 1.0f, 1.0f}), ElementsAre(1.0f, 1.0f, 1.0f, 1.0f));
  p.Accept(1);
  p.Accept(1);
  p.Accept(2);
  EXPECT_THAT(Applied(p, {1.0f, 1.0f, 1.0f, 1.0f}), ElementsAre(1.0f, -0.25f, 0.25f, 1.0f));
  o.frequency_penalty = -1.0f;  // negative values encourage repetition
  o.presence_penalty = -2.0f;
  LogitsProcessor q(o, prompt, {});
  q.Accept(2);
  EXPECT_THAT(Applied(q, {1.0f, 1.0f, 1.0f, 1.0f}), ElementsAre(1.0f, 1.0f, 4.0f, 1.0f));
}

TEST(LogitsProcessorTest, BiasComesBeforePenaltiesAsInVllm) {
  SamplingOptions o;
  o.logit_bias = {{0, 1.0f}};
  o.repetition_penalty = 2.0f;
  o.presence_penalty = 0.5f;
  const std::vector<int32_t> prompt = {0};
  LogitsProcessor p(o, prompt, {});
  p.Accept(0);
  // (-0.5 + 1) / 2 - 0.5; the other order would give -0.5 * 2 + 1 - 0.5.
  EXPECT_THAT(Applied(p, {-0.5f, 0.0f}), ElementsAre(-0.25f, 0.0f));
}

TEST(LogitsProcessorTest, MinTokensMasksEogAndStopTokensUntilReached) {
  SamplingOptions o;
  o.min_tokens = 2;
  o.stop_token_ids = {3};
  const std::vector<int32_t> eog = {5, 4};
  LogitsProcessor p(o, {}, eog);
  const std::vector<float> row(6, 1.0f);
  EXPECT_THAT(Applied(p, row), ElementsAre(1.0f, 1.0f, 1.0f, -kInf, -kInf, -kInf));
  p.Accept(0);
  EXPECT_THAT(Applied(p, row), ElementsAre(1.0f, 1.0f, 1.0f, -kInf, -kInf, -kInf));
  p.Accept(1);
  EXPECT_THAT(Applied(p, row), ElementsAre(1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f));
  // ignore_eos: EOG does not end generation, so it is not masked either.
  o.ignore_eos = true;
  const LogitsProcessor q(o, {}, eog);
  EXPECT_THAT(Applied(q, row), ElementsAre(1.0f, 1.0f, 1.0f, -kInf, 1.0f, 1.0f));
}

// The engine hands the backend the pick only when Sample would draw from
// the row as the model gave it.
TEST(SequenceSamplerTest, DrawsFromTheRowAsItIsOnlyWithoutLogitProcessing) {
  const std::vector<int32_t> eog = {3};
  EXPECT_TRUE(SequenceSampler(SamplingOptions{}, {}, eog).DrawsFromTheRowAsItIs());
  SamplingOptions o;
  o.temperature = 0.7f;
  o.logprobs = true;
  EXPECT_TRUE(SequenceSampler(o, {}, eog).DrawsFromTheRowAsItIs());
  o = {};
  o.logit_bias = {{2, 1.0f}};
  EXPECT_FALSE(SequenceSampler(o, {}, eog).DrawsFromTheRowAsItIs());
  o = {};
  o.repetition_penalty = 1.1f;
  EXPECT_FALSE(SequenceSampler(o, {}, eog).DrawsFromTheRowAsItIs());
  o = {};
  o.min_tokens = 1;
  SequenceSampler s(o, {}, eog);
  EXPECT_FALSE(s.DrawsFromTheRowAsItIs());  // EOG masked until one token is out
  s.Accept(0);
  EXPECT_TRUE(s.DrawsFromTheRowAsItIs());
  o.ignore_eos = true;  // nothing to mask
  EXPECT_TRUE(SequenceSampler(o, {}, eog).DrawsFromTheRowAsItIs());
}

// Edits, applied token by token with EditLogit, do what Apply does.
TEST(LogitsProcessorTest, EditsDoWhatApplyDoes) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int trial = 0; trial < 50; ++trial) {
    SamplingOptions o;
    if (trial % 2) o.logit_bias = {{3, 2.5f}, {17, -1.0f}, {40, 0.25f}};
    if (trial % 3) o.repetition_penalty = 1.3f;
    if (trial % 5) o.frequency_penalty = 0.4f;
    if (trial % 7) o.presence_penalty = 0.6f;
    o.min_tokens = trial % 4;
    o.stop_token_ids = {41};
    const std::vector<int32_t> prompt = {3, 5, 5, 60};
    const std::vector<int32_t> eog = {62};
    LogitsProcessor p(o, prompt, eog);
    for (int32_t t = 0; t < trial % 6; ++t) p.Accept(static_cast<int32_t>(rng() % 64));
    std::vector<float> row(64);
    for (float& x : row) x = normal(rng);
    std::vector<float> want = row;
    p.Apply(want);
    std::vector<LogitEdit> edits;
    p.Edits(edits);
    std::vector<float> got = row;
    std::set<int32_t> seen;
    for (const LogitEdit& e : edits) {
      EXPECT_TRUE(seen.insert(e.token).second) << "token " << e.token << " edited twice";
      got[e.token] = EditLogit(got[e.token], e);
    }
    EXPECT_EQ(got, want) << "trial " << trial;
    if (!edits.empty()) {
      EXPECT_TRUE(p.ChangesLogits()) << "trial " << trial;
    }
  }
}

// A pick carries the sampler's settings and takes the stream's uniform as
// Sample would: the same seed gives the same uniforms, greedy takes none.
TEST(SequenceSamplerTest, NextPickDrawsTheStreamsUniformAtTemperature) {
  SamplingOptions o;
  o.temperature = 0.9f;
  o.top_k = 7;
  o.top_p = 0.8f;
  o.min_p = 0.05f;
  o.logprobs = true;
  o.top_logprobs = 3;
  o.seed = 11;
  SequenceSampler a(o, {}, {}), b(o, {}, {});
  const TokenPick first = a.NextPick();
  EXPECT_EQ(first.temperature, 0.9f);
  EXPECT_EQ(first.top_k, 7);
  EXPECT_EQ(first.top_p, 0.8f);
  EXPECT_EQ(first.min_p, 0.05f);
  EXPECT_TRUE(first.logprobs);
  EXPECT_EQ(first.top_logprobs, 3);
  EXPECT_GE(first.uniform, 0.0);
  EXPECT_LT(first.uniform, 1.0);
  EXPECT_EQ(b.NextPick().uniform, first.uniform);
  EXPECT_NE(a.NextPick().uniform, first.uniform);
  EXPECT_EQ(SequenceSampler(SamplingOptions{}, {}, {}).NextPick().uniform, 0.0);
}

TEST(SequenceSamplerTest, GreedyWaitsForMinTokensAndFeelsPenalties) {
  SamplingOptions o;
  o.min_tokens = 2;
  o.frequency_penalty = 2.0f;
  const std::vector<int32_t> eog = {3};
  SequenceSampler s(o, std::vector<int32_t>{1}, eog);
  const std::vector<float> row = {1.0f, 2.0f, 0.5f, 5.0f};
  std::vector<int32_t> tokens;
  for (int i = 0; i < 4; ++i) {
    std::vector<float> copy = row;
    tokens.push_back(s.Sample(copy).token);
    s.Accept(tokens.back());
  }
  // 1 (best unmasked), then 0 (1 is penalised to 0), then EOG.
  EXPECT_THAT(tokens, ElementsAre(1, 0, 3, 3));
}

TEST(SequenceSamplerTest, OverwritesTheRowAndReportsProcessedLogprobs) {
  SamplingOptions o;
  o.logprobs = true;
  o.logit_bias = {{0, 100.0f}};
  SequenceSampler s(o, std::vector<int32_t>{}, {});
  std::vector<float> row = {0.0f, 5.0f, 5.0f};
  const SampledToken t = s.Sample(row);
  EXPECT_EQ(t.token, 0);
  EXPECT_EQ(row[0], 100.0f);
  EXPECT_NEAR(t.logprob, -2.0f * std::exp(-95.0f), 1e-6);
}

TEST(SequenceSamplerTest, SeededRunsRepeat) {
  SamplingOptions o;
  o.temperature = 1.0f;
  o.top_p = 0.95f;
  o.repetition_penalty = 1.3f;
  o.presence_penalty = 0.5f;
  o.seed = 123;
  std::vector<float> row(500);
  for (int i = 0; i < 500; ++i) row[i] = std::sin(i * 0.13f) * 4.0f;
  auto run = [&] {
    SequenceSampler s(o, std::vector<int32_t>{1, 2, 3}, {});
    std::vector<int32_t> out;
    for (int i = 0; i < 40; ++i) {
      std::vector<float> copy = row;
      out.push_back(s.Sample(copy).token);
      s.Accept(out.back());
    }
    return out;
  };
  EXPECT_EQ(run(), run());
}

constexpr int32_t kVocab = 100;
constexpr int32_t kRoom = 50;  // context minus prompt

TEST(ValidateSamplingOptionsTest, DefaultsAndEveryLimitAreAccepted) {
  EXPECT_TRUE(ValidateSamplingOptions({}, kVocab, kRoom).ok());
  SamplingOptions o;
  o.max_tokens = kRoom;
  o.min_tokens = kRoom;
  o.temperature = 100.0f;
  o.top_k = kVocab;
  o.top_p = 1e-6f;
  o.min_p = 1.0f;
  o.stop.assign(16, std::string(256, 'x'));
  o.stop_token_ids.assign(64, kVocab - 1);
  o.repetition_penalty = 2.0f;
  o.presence_penalty = -2.0f;
  o.frequency_penalty = 2.0f;
  for (int32_t t = 0; t < 300; ++t) o.logit_bias.emplace_back(t % kVocab, t % 2 ? 100.0f : -100.0f);
  o.logprobs = true;
  o.top_logprobs = 20;
  o.n = 16;
  const absl::Status s = ValidateSamplingOptions(o, kVocab, kRoom);
  EXPECT_TRUE(s.ok()) << s;
}

TEST(ValidateSamplingOptionsTest, EveryBadValueIsNamed) {
  struct Case {
    std::function<void(SamplingOptions&)> set;
    std::string message;  // expected prefix
  };
  const std::vector<Case> cases = {
      {[](auto& o) { o.max_tokens = 0; }, "sampling.max_tokens: must be in [1, 50] (the model's context minus the prompt), got 0"},
      {[](auto& o) { o.max_tokens = -3; }, "sampling.max_tokens: must be in [1, 50]"},
      {[](auto& o) { o.max_tokens = 51; }, "sampling.max_tokens: must be in [1, 50] (the model's context minus the prompt), got 51"},
      {[](auto& o) { o.min_tokens = -1; }, "sampling.min_tokens: must be in [0, max_tokens = 16], got -1"},
      {[](auto& o) { o.min_tokens = 17; }, "sampling.min_tokens: must be in [0, max_tokens = 16], got 17"},
      {[](auto& o) { o.temperature = kNan; }, "sampling.temperature: must be in [0, 100], got nan"},
      {[](auto& o) { o.temperature = -0.5f; }, "sampling.temperature: must be in [0, 100], got -0.5"},
      {[](auto& o) { o.temperature = 100.5f; }, "sampling.temperature: must be in [0, 100], got 100.5"},
      {[](auto& o) { o.temperature = kInf; }, "sampling.temperature: must be in [0, 100], got inf"},
      {[](auto& o) { o.top_k = -1; }, "sampling.top_k: must be in [0, 100] (0 = all tokens), got -1"},
      {[](auto& o) { o.top_k = 101; }, "sampling.top_k: must be in [0, 100] (0 = all tokens), got 101"},
      {[](auto& o) { o.top_p = 0.0f; }, "sampling.top_p: must be in (0, 1], got 0"},
      {[](auto& o) { o.top_p = 1.5f; }, "sampling.top_p: must be in (0, 1], got 1.5"},
      {[](auto& o) { o.top_p = kNan; }, "sampling.top_p: must be in (0, 1], got nan"},
      {[](auto& o) { o.min_p = -0.25f; }, "sampling.min_p: must be in [0, 1], got -0.25"},
      {[](auto& o) { o.min_p = kInf; }, "sampling.min_p: must be in [0, 1], got inf"},
      {[](auto& o) { o.min_p = kNan; }, "sampling.min_p: must be in [0, 1], got nan"},
      {[](auto& o) { o.stop.assign(17, "x"); }, "sampling.stop: at most 16 strings, got 17"},
      {[](auto& o) { o.stop = {"a", "b", ""}; }, "sampling.stop[2]: must be 1 to 256 bytes long, got 0"},
      {[](auto& o) { o.stop = {std::string(257, 'y')}; }, "sampling.stop[0]: must be 1 to 256 bytes long, got 257"},
      {[](auto& o) { o.stop_token_ids.assign(65, 1); }, "sampling.stop_token_ids: at most 64 tokens, got 65"},
      {[](auto& o) { o.stop_token_ids = {5, 100}; }, "sampling.stop_token_ids[1]: token 100 is outside the vocabulary [0, 100)"},
      {[](auto& o) { o.stop_token_ids = {-1}; }, "sampling.stop_token_ids[0]: token -1 is outside the vocabulary [0, 100)"},
      {[](auto& o) { o.repetition_penalty = 0.0f; }, "sampling.repetition_penalty: must be in (0, 2] (1 = off), got 0"},
      {[](auto& o) { o.repetition_penalty = -1.0f; }, "sampling.repetition_penalty: must be in (0, 2] (1 = off), got -1"},
      {[](auto& o) { o.repetition_penalty = 2.5f; }, "sampling.repetition_penalty: must be in (0, 2] (1 = off), got 2.5"},
      {[](auto& o) { o.repetition_penalty = kNan; }, "sampling.repetition_penalty: must be in (0, 2] (1 = off), got nan"},
      {[](auto& o) { o.presence_penalty = -2.5f; }, "sampling.presence_penalty: must be in [-2, 2], got -2.5"},
      {[](auto& o) { o.presence_penalty = kNan; }, "sampling.presence_penalty: must be in [-2, 2], got nan"},
      {[](auto& o) { o.frequency_penalty = 3.0f; }, "sampling.frequency_penalty: must be in [-2, 2], got 3"},
      {[](auto& o) { o.frequency_penalty = -kInf; }, "sampling.frequency_penalty: must be in [-2, 2], got -inf"},
      {[](auto& o) { o.logit_bias.assign(301, {1, 1.0f}); }, "sampling.logit_bias: at most 300 entries, got 301"},
      {[](auto& o) { o.logit_bias = {{3, 1.0f}, {100, 1.0f}}; }, "sampling.logit_bias: token 100 is outside the vocabulary [0, 100)"},
      {[](auto& o) { o.logit_bias = {{-2, 1.0f}}; }, "sampling.logit_bias: token -2 is outside the vocabulary [0, 100)"},
      {[](auto& o) { o.logit_bias = {{5, 101.0f}}; }, "sampling.logit_bias[5]: must be in [-100, 100], got 101"},
      {[](auto& o) { o.logit_bias = {{7, kNan}}; }, "sampling.logit_bias[7]: must be in [-100, 100], got nan"},
      {[](auto& o) { o.logit_bias = {{7, -kInf}}; }, "sampling.logit_bias[7]: must be in [-100, 100], got -inf"},
      {[](auto& o) { o.logprobs = true; o.top_logprobs = 21; }, "sampling.top_logprobs: must be in [0, 20], got 21"},
      {[](auto& o) { o.logprobs = true; o.top_logprobs = -1; }, "sampling.top_logprobs: must be in [0, 20], got -1"},
      {[](auto& o) { o.top_logprobs = 3; }, "sampling.top_logprobs: needs logprobs = true"},
      {[](auto& o) { o.n = 0; }, "sampling.n: must be in [1, 16], got 0"},
      {[](auto& o) { o.n = 17; }, "sampling.n: must be in [1, 16], got 17"},
  };
  for (const Case& c : cases) {
    SamplingOptions o;
    c.set(o);
    const absl::Status s = ValidateSamplingOptions(o, kVocab, kRoom);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(s.message()), StartsWith(c.message));
  }
}

}  // namespace
}  // namespace attnserve
