#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "engine/backend/backend.h"
#include "gtest/gtest.h"

namespace attnserve {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

SamplingOptions Random(float temperature, uint64_t seed = 1) {
  SamplingOptions o;
  o.temperature = temperature;
  o.seed = seed;
  return o;
}

std::vector<float> LogsOf(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

// Token -> frequency over `draws` samples.
std::map<int32_t, double> Frequencies(Sampler& s, const std::vector<float>& logits, int draws) {
  std::map<int32_t, int> counts;
  for (int i = 0; i < draws; ++i) ++counts[s.Sample(logits).token];
  std::map<int32_t, double> freq;
  for (auto [t, c] : counts) freq[t] = c / static_cast<double>(draws);
  return freq;
}

std::set<int32_t> Keys(const std::map<int32_t, double>& m) {
  std::set<int32_t> keys;
  for (auto [k, v] : m) keys.insert(k);
  return keys;
}

// The truncated and renormalised distribution by the definition: sort,
// temperature, top_k, top_p over the top_k mass, min_p against the top token.
std::map<int32_t, double> Reference(const std::vector<float>& logits, const SamplingOptions& o) {
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  if (o.top_k > 0 && order.size() > static_cast<size_t>(o.top_k)) order.resize(o.top_k);
  std::vector<double> w;
  for (int32_t t : order) w.push_back(std::exp((logits[t] - logits[order[0]]) / static_cast<double>(o.temperature)));
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  size_t keep = 0;
  for (double mass = 0.0; keep < w.size() && mass < o.top_p * total;) mass += w[keep++];
  while (keep > 1 && w[keep - 1] < o.min_p) --keep;
  const double kept = std::accumulate(w.begin(), w.begin() + keep, 0.0);
  std::map<int32_t, double> probs;
  for (size_t i = 0; i < keep; ++i) probs[order[i]] = w[i] / kept;
  return probs;
}

TEST(SamplerTest, GreedyPicksTheLargestLogitAndTheLowestIndexOnTies) {
  Sampler greedy({});
  EXPECT_EQ(greedy.Sample(std::vector<float>{0.1f, 3.0f, -1.0f, 3.0f}).token, 1);
  EXPECT_EQ(ArgMax(std::vector<float>{-5.0f}), 0);
}

// ArgMax (the backends' greedy pick too, and the GPU kernel's reference):
// ties, NaN and -inf rows included.
TEST(SamplerTest, ArgMaxSkipsNaNAndTakesTheFirstOfTies) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(ArgMax(std::vector<float>{1, 3, 3, 2}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{nan, 1, nan, 1}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{-inf, -inf}), 0);
  EXPECT_EQ(ArgMax(std::vector<float>{nan, nan}), 0);
  EXPECT_EQ(ArgMax(std::vector<float>{-inf, nan, 2}), 2);
  EXPECT_EQ(ArgMax(std::vector<float>{inf, 0, inf}), 0);
  EXPECT_EQ(ArgMax(std::vector<float>{5}), 0);
}

// PickToken (the backends' draw, the GPU kernel's reference): the Sampler's
// cuts, the draw walking the kept tokens in id order.
TEST(SamplerTest, PickTokenDrawsWithinTheSamplersCuts) {
  // Probabilities 0.05, 0.5, 0.15, 0.3 at temperature 1.
  const std::vector<float> row = {std::log(0.05f), std::log(0.5f), std::log(0.15f), std::log(0.3f)};
  const auto draws = [&](TokenPick p) {
    std::map<int32_t, int> n;
    for (int i = 0; i < 1000; ++i) {
      p.uniform = (i + 0.5) / 1000.0;
      ++n[PickToken(row, p)];
    }
    return n;
  };
  TokenPick p;
  p.temperature = 1.0f;
  std::map<int32_t, int> n = draws(p);
  EXPECT_EQ(n[0], 50);
  EXPECT_EQ(n[1], 500);
  EXPECT_EQ(n[2], 150);
  EXPECT_EQ(n[3], 300);
  p.top_k = 2;  // 0.5 and 0.3, renormalised
  n = draws(p);
  EXPECT_EQ(n.size(), 2u);
  EXPECT_EQ(n[1], 625);
  EXPECT_EQ(n[3], 375);
  p.top_k = 0;
  p.top_p = 0.7f;  // the smallest set reaching 0.7: 0.5 + 0.3
  n = draws(p);
  EXPECT_EQ(n.size(), 2u);
  EXPECT_EQ(n[1] + n[3], 1000);
  p.top_p = 1.0f;
  p.min_p = 0.2f;  // p >= 0.1 stays
  n = draws(p);
  EXPECT_EQ(n.size(), 3u);
  EXPECT_EQ(n.count(0), 0u);
  p.min_p = 0.0f;
  p.uniform = 0.0;  // the first kept token in id order
  EXPECT_EQ(PickToken(row, p), 0);
  p.temperature = 0.0f;  // greedy
  EXPECT_EQ(PickToken(row, p), 1);
}

// PickLogprobs (the backends' log-probabilities of a pick) reports what the
// Sampler reports for the same row and token: its logprob and top tokens.
TEST(SamplerTest, PickLogprobsAreTheSamplers) {
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int r = 0; r < 20; ++r) {
    std::vector<float> row(1000 + 37 * r);
    for (float& x : row) x = normal(rng);
    row[5] = row[6];  // a tie
    row[9] = -std::numeric_limits<float>::infinity();
    SamplingOptions o;
    o.logprobs = true;
    o.top_logprobs = r % 21;
    const SampledToken want = Sampler(o).Sample(row);
    TokenPick pick;
    pick.logprobs = true;
    pick.top_logprobs = o.top_logprobs;
    pick.token = want.token;
    PickLogprobs(row, pick);
    EXPECT_NEAR(pick.logprob, want.logprob, 1e-5f);
    ASSERT_EQ(pick.n_top, static_cast<int32_t>(want.top.size()));
    for (int k = 0; k < pick.n_top; ++k) {
      EXPECT_EQ(pick.top_tokens[k], want.top[k].token);
      EXPECT_NEAR(pick.top_logprob_values[k], want.top[k].logprob, 1e-5f);
    }
  }
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f);
  auto draw = [&](uint64_t seed) {
    Sampler s(Random(1.0f, seed));
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Sample(logits).token);
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(SamplerTest, OtherSequencesInTheBatchDoNotChangeTheTokens) {
  std::vector<float> a(1000), b(1000);
  for (int i = 0; i < 1000; ++i) {
    a[i] = std::sin(i * 0.11f) * 3.0f;
    b[i] = std::cos(i * 0.07f) * 2.0f;
  }
  SamplingOptions o = Random(0.8f, 9);
  o.top_p = 0.9f;
  Sampler alone(o);
  std::vector<int32_t> expected;
  for (int i = 0; i < 30; ++i) expected.push_back(alone.Sample(a).token);
  // Same request, now interleaved with two other sequences' rows.
  Sampler again(o), other1(Random(1.0f, 9)), other2(Random(1.3f));
  for (int i = 0; i < 30; ++i) {
    other1.Sample(b);
    EXPECT_EQ(again.Sample(a).token, expected[i]) << i;
    other2.Sample(a);
  }
}

TEST(SamplerTest, FrequenciesFollowTheSoftmaxAtTheTemperature) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};
  // p(1) = 3^(1/T) / (1 + 3^(1/T)).
  for (float t : {0.5f, 1.0f, 2.0f}) {
    Sampler s(Random(t, 7));
    const double p1 = std::pow(3.0, 1.0 / t) / (1.0 + std::pow(3.0, 1.0 / t));
    EXPECT_NEAR(Frequencies(s, logits, 20000)[1], p1, 0.015) << "temperature " << t;
  }
}

TEST(SamplerTest, TopKKeepsTheKLargestAndTheLowestIdsOnTies) {
  SamplingOptions o = Random(1.0f);
  o.top_k = 2;
  Sampler s(o);
  const auto freq = Frequencies(s, {5.0f, 4.9f, 4.8f, -10.0f, 1.0f}, 4000);
  EXPECT_EQ(Keys(freq), (std::set<int32_t>{0, 1}));
  EXPECT_NEAR(freq.at(0), 1.0 / (1.0 + std::exp(-0.1)), 0.03);
  Sampler ties(o);
  EXPECT_EQ(Keys(Frequencies(ties, {1.0f, 1.0f, 1.0f, 1.0f}, 400)), (std::set<int32_t>{0, 1}));
}

TEST(SamplerTest, TopPKeepsTheShortestPrefixReachingTheMass) {
  const std::vector<float> logits = LogsOf({0.1, 0.4, 0.2, 0.3});
  const std::vector<std::pair<float, std::set<int32_t>>> cases = {
      {0.35f, {1}}, {0.65f, {1, 3}}, {0.75f, {1, 3, 2}}, {0.95f, {0, 1, 2, 3}}, {1.0f, {0, 1, 2, 3}}};
  for (const auto& [top_p, kept] : cases) {
    SamplingOptions o = Random(1.0f);
    o.top_p = top_p;
    Sampler s(o);
    EXPECT_EQ(Keys(Frequencies(s, logits, 3000)), kept) << "top_p " << top_p;
  }
}

TEST(SamplerTest, TopPWeighsTheTopKRenormalisedMass) {
  // After top_k = 2 the top token holds 0.5 / 0.7 > 0.7: it is kept alone.
  SamplingOptions o = Random(1.0f);
  o.top_k = 2;
  o.top_p = 0.7f;
  Sampler s(o);
  EXPECT_EQ(Keys(Frequencies(s, LogsOf({0.5, 0.2, 0.1, 0.1, 0.1}), 500)), (std::set<int32_t>{0}));
}

TEST(SamplerTest, TemperatureComesBeforeTopP) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.0f};  // T=1: p = .67 .24 .09; T=10: .37 .33 .30
  SamplingOptions o = Random(1.0f);
  o.top_p = 0.6f;
  Sampler cold(o);
  EXPECT_EQ(Keys(Frequencies(cold, logits, 500)), (std::set<int32_t>{0}));
  o.temperature = 10.0f;
  Sampler hot(o);
  EXPECT_EQ(Keys(Frequencies(hot, logits, 2000)), (std::set<int32_t>{0, 1}));
}

TEST(SamplerTest, MinPDropsTokensBelowAFractionOfTheTopOne) {
  const std::vector<float> logits = LogsOf({0.5, 0.3, 0.1, 0.06, 0.04});
  SamplingOptions o = Random(1.0f);
  o.min_p = 0.15f;  // floor 0.075
  Sampler s(o);
  const auto freq = Frequencies(s, logits, 20000);
  EXPECT_EQ(Keys(freq), (std::set<int32_t>{0, 1, 2}));
  EXPECT_NEAR(freq.at(0), 0.5 / 0.9, 0.015);
  // After top_k = 4 and top_p = 0.9 (over 0.96): {0, 1, 2}; min_p 0.25: {0, 1}.
  o.top_k = 4;
  o.top_p = 0.9f;
  o.min_p = 0.25f;
  Sampler all(o);
  EXPECT_EQ(Keys(Frequencies(all, logits, 2000)), (std::set<int32_t>{0, 1}));
}

TEST(SamplerTest, RandomRowsMatchTheReferenceDistribution) {
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int row = 0; row < 6; ++row) {
    std::vector<float> logits(12);
    for (float& l : logits) l = normal(gen);
    SamplingOptions o = Random(0.5f + 0.3f * row, row);
    o.top_k = row % 2 ? 8 : 0;
    o.top_p = row % 3 ? 0.85f : 1.0f;
    o.min_p = row >= 3 ? 0.02f : 0.0f;
    const auto expected = Reference(logits, o);
    Sampler s(o);
    const auto freq = Frequencies(s, logits, 30000);
    // Seen tokens are all allowed; allowed tokens are seen at their rate.
    for (auto [t, f] : freq) EXPECT_TRUE(expected.count(t)) << "row " << row << " token " << t;
    for (auto [t, p] : expected) {
      const double f = freq.count(t) ? freq.at(t) : 0.0;
      EXPECT_NEAR(f, p, 4.5 * std::sqrt(p * (1 - p) / 30000) + 1e-3) << "row " << row << " token " << t;
    }
  }
}

TEST(SamplerTest, CutsInsideRunsOfNearlyEqualLogitsAreExact) {
  // 40 logits 1e-4 apart share a histogram bucket: the cut inside it is
  // made by sorting, and ties go to the lower id.
  std::vector<float> logits(60, -3.0f);
  for (int i = 0; i < 40; ++i) logits[(i * 7) % 60] = 1.0f + 1e-4f * static_cast<float>(i % 37);
  struct Case {
    int32_t top_k;
    float top_p;
  };
  for (const Case c : {Case{7, 1.0f}, Case{0, 0.4f}, Case{15, 0.5f}, Case{30, 0.2f}, Case{3, 0.9f}}) {
    SamplingOptions o = Random(1.0f, 4);
    o.top_k = c.top_k;
    o.top_p = c.top_p;
    Sampler s(o);
    EXPECT_EQ(Keys(Frequencies(s, logits, 3000)), Keys(Reference(logits, o))) << c.top_k << " " << c.top_p;
  }
  // Exact ties across the cut: the lowest ids stay.
  std::vector<float> ties(100, -5.0f);
  for (int i = 0; i < 30; ++i) ties[(i * 31) % 100] = 2.0f;
  for (const Case c : {Case{5, 1.0f}, Case{0, 0.3f}}) {
    SamplingOptions o = Random(1.0f, 8);
    o.top_k = c.top_k;
    o.top_p = c.top_p;
    Sampler s(o);
    EXPECT_EQ(Keys(Frequencies(s, ties, 3000)), Keys(Reference(ties, o))) << c.top_k << " " << c.top_p;
  }
}

TEST(SamplerTest, FullVocabularyTopPDrawsOnlyFromTheNucleus) {
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(49152);
  for (float& l : logits) l = normal(gen);
  SamplingOptions o = Random(1.0f, 5);
  o.top_p = 0.5f;
  const auto expected = Reference(logits, o);
  Sampler s(o);
  const auto freq = Frequencies(s, logits, 2000);
  for (auto [t, f] : freq) EXPECT_TRUE(expected.count(t)) << t;
  EXPECT_GT(freq.size(), expected.size() / 4);  // not just the top few
}

TEST(SamplerTest, MaskedAndNanEntriesAreNeverDrawn) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Sampler s(Random(1.0f));
  EXPECT_EQ(Keys(Frequencies(s, {-kInf, 0.0f, nan, 0.0f, -kInf}, 500)), (std::set<int32_t>{1, 3}));
  // A row with nothing to draw still yields an index inside it.
  const int32_t t = s.Sample(std::vector<float>{-kInf, -kInf, -kInf}).token;
  EXPECT_TRUE(t >= 0 && t < 3);
}

TEST(SamplerTest, LogprobsComeFromTheRowBeforeTemperatureAndTruncation) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -kInf};
  const double log_z = std::log(std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0));
  SamplingOptions o;
  o.logprobs = true;
  o.top_logprobs = 3;
  Sampler greedy(o);
  const SampledToken g = greedy.Sample(logits);
  EXPECT_EQ(g.token, 1);
  EXPECT_NEAR(g.logprob, 3.0 - log_z, 1e-5);
  ASSERT_EQ(g.top.size(), 3u);  // ties: lower id first
  EXPECT_EQ(g.top[0].token, 1);
  EXPECT_EQ(g.top[1].token, 3);
  EXPECT_EQ(g.top[2].token, 2);
  EXPECT_NEAR(g.top[2].logprob, 2.0 - log_z, 1e-5);
  // Sampling hot and truncated: the logprobs stay those of the row.
  o.temperature = 5.0f;
  o.top_k = 2;
  o.top_logprobs = 20;  // more than the finite entries: the -inf one is left out
  Sampler hot(o);
  for (int i = 0; i < 20; ++i) {
    const SampledToken s = hot.Sample(logits);
    EXPECT_NEAR(s.logprob, logits[s.token] - log_z, 1e-5);
    EXPECT_EQ(s.top.size(), 4u);
  }
  Sampler plain(Random(1.0f));
  EXPECT_TRUE(plain.Sample(logits).top.empty());
}

TEST(SamplerTest, LogSoftmaxNormalises) {
  const std::vector<float> logits = {1000.0f, 999.0f, -1000.0f};
  std::vector<float> out(3);
  LogSoftmax(logits, out);
  double total = 0;
  for (float l : out) total += std::exp(static_cast<double>(l));
  EXPECT_NEAR(total, 1.0, 1e-6);
  EXPECT_NEAR(out[0] - out[1], 1.0f, 1e-4);
}

}  // namespace
}  // namespace attnserve
