#include "engine/sampling/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace attnserve {
namespace {

TEST(SamplerTest, GreedyPicksTheLargestLogitAndTheLowestIndexOnTies) {
  Sampler greedy({});
  EXPECT_EQ(greedy.Sample(std::vector<float>{0.1f, 3.0f, -1.0f, 3.0f}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{-5.0f}), 0);
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f);
  SamplingConfig config;
  config.temperature = 1.0f;
  config.seed = 42;
  auto draw = [&](uint64_t seed) {
    config.seed = seed;
    Sampler s(config);
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Sample(logits));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  SamplingConfig config;
  config.temperature = 1.0f;
  config.seed = 7;
  Sampler s(config);
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.Sample(logits);
  EXPECT_NEAR(ones / static_cast<double>(n), 0.75, 0.015);
}

TEST(SamplerTest, TopKAndTopPRestrictTheCandidates) {
  const std::vector<float> logits = {5.0f, 4.9f, 4.8f, -10.0f, 1.0f};
  SamplingConfig config;
  config.temperature = 1.0f;
  config.top_k = 2;
  Sampler top_k(config);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[top_k.Sample(logits)];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(0) && seen.count(1));
  config.top_k = 0;
  config.top_p = 0.3f;  // the first token alone holds ~0.36
  Sampler top_p(config);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(top_p.Sample(logits), 0);
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
