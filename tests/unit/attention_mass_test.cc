// AttentionColumnMassKvHead (ACT's prefill statistic) and the kernel's
// log-denominators (the linear mode's) against probabilities computed
// naively in double from the same hooks.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "kernels/common/attention_hooks.h"
#include "kernels/common/half.h"
#include "kernels/cpu/attention.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using namespace testing_attention;

// [n_q_heads][num_tokens]: Σ over the problem's queries of p_ij.
std::vector<double> NaiveColumnMass(Problem& pr) {
  const SequenceAttentionParams params = pr.Params();
  const int hd = pr.head_dim;
  std::vector<double> mass(static_cast<size_t>(pr.n_q_heads()) * pr.num_tokens, 0.0);
  for (int i = 0; i < pr.n_queries; ++i) {
    const int32_t pos = pr.positions[i];
    for (int h = 0; h < pr.n_q_heads(); ++h) {
      const AttentionHeadParams& hp = params.heads[h];
      const int g = h / pr.group;
      std::vector<double> logit(pos + 1, -INFINITY);
      double max = hp.virtual_sink_logit;
      for (int32_t j = 0; j <= pos; ++j) {
        if (!HeadKeyVisible(params, hp, pos, j)) continue;
        const size_t row = ((static_cast<size_t>(pr.page_table[j / pr.page_size]) * pr.n_kv_heads + g) * pr.page_size +
                            j % pr.page_size) * hd;
        double dot = 0.0;
        for (int c = 0; c < hd; ++c) {
          dot += static_cast<double>(pr.q[(static_cast<size_t>(i) * pr.n_q_heads() + h) * hd + c]) *
                 Fp16ToFloat(pr.keys[row + c]);
        }
        logit[j] = dot * hp.logit_scale + KeyBias(params, hp, j);
        max = std::max(max, logit[j]);
      }
      double denom = std::isinf(hp.virtual_sink_logit) ? 0.0 : std::exp(hp.virtual_sink_logit - max);
      for (double l : logit) denom += std::exp(l - max);
      for (int32_t j = 0; j <= pos; ++j) mass[static_cast<size_t>(h) * pr.num_tokens + j] += std::exp(logit[j] - max) / denom;
    }
  }
  return mass;
}

std::vector<double> KernelColumnMass(Problem& pr) {
  std::vector<double> mass(static_cast<size_t>(pr.n_q_heads()) * pr.num_tokens, 0.0);
  const SequenceAttentionParams params = pr.Params();
  for (int g = 0; g < pr.n_kv_heads; ++g) {
    AttentionColumnMassKvHead(pr.Queries(), pr.Kv(), params, g,
                              mass.data() + static_cast<size_t>(g) * pr.group * pr.num_tokens);
  }
  return mass;
}

class ColumnMassTest : public testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override { hwy::SetSupportedTargetsForTest(GetParam()); }
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

// Each probability is rounded to fp16 before it is added (relative 2^-11),
// so a column of n queries is within 2^-11 of its mass plus float noise.
void ExpectSameMass(Problem& pr) {
  const std::vector<double> got = KernelColumnMass(pr);
  const std::vector<double> want = NaiveColumnMass(pr);
  double total = 0.0;
  for (size_t k = 0; k < got.size(); ++k) {
    ASSERT_NEAR(got[k], want[k], want[k] * 0x1p-10 + 1e-6) << "head " << k / pr.num_tokens << " key "
                                                           << k % pr.num_tokens;
    total += got[k];
  }
  // Every query's row sums to 1 when no virtual sink takes a share.
  bool sinkless = true;
  for (const AttentionHeadParams& h : pr.heads) sinkless &= std::isinf(h.virtual_sink_logit);
  if (sinkless) {
    EXPECT_NEAR(total, static_cast<double>(pr.n_queries) * pr.n_q_heads(), 1e-2 * pr.n_queries);
  }
}

TEST_P(ColumnMassTest, DenseOverOddSizesAndPages) {
  for (auto [tokens, queries] : {std::pair{1, 1}, {37, 37}, {100, 33}, {161, 1}, {300, 64}}) {
    SCOPED_TRACE(testing::Message() << tokens << " tokens, " << queries << " queries");
    Problem pr(16, 64, 2, 3, tokens, queries, 11);
    ExpectSameMass(pr);
  }
}

TEST_P(ColumnMassTest, WithHooks) {
  Problem pr(16, 72, 2, 2, 130, 130, 12);
  pr.params.sink_tokens = 3;
  pr.params.window_tokens = 40;
  pr.spans = {{5, 20}};
  pr.params.prompt_tokens = 100;
  pr.heads[0].first_token_bias = std::log(5.0f);
  pr.heads[1].outside_span_bias = std::log(0.05f);
  pr.heads[2].virtual_sink_logit = 1.0f;
  pr.heads[3].logit_scale *= 2.0f;
  ExpectSameMass(pr);
}

TEST_P(ColumnMassTest, WithHeadWindows) {
  Problem pr(16, 64, 2, 2, 120, 120, 14);
  pr.heads[0].sink_tokens = 2;
  pr.heads[0].window_tokens = 16;
  pr.heads[2].window_tokens = 1;
  pr.heads[3].sink_tokens = 8;
  pr.heads[3].window_tokens = 30;
  ExpectSameMass(pr);
}

// Calls over disjoint query blocks add up to one call over all of them (the
// backend splits a prompt's queries across threads).
TEST_P(ColumnMassTest, AccumulatesAcrossCalls) {
  Problem pr(16, 64, 1, 4, 90, 90, 13);
  const std::vector<double> whole = KernelColumnMass(pr);
  std::vector<double> parts(whole.size(), 0.0);
  const SequenceAttentionParams params = pr.Params();
  for (int q0 = 0; q0 < pr.n_queries; q0 += 32) {
    AttentionQueries q = pr.Queries();
    q.q += static_cast<size_t>(q0) * pr.n_q_heads() * pr.head_dim;
    q.positions += q0;
    q.n_queries = std::min(32, pr.n_queries - q0);
    AttentionColumnMassKvHead(q, pr.Kv(), params, 0, parts.data());
  }
  for (size_t k = 0; k < whole.size(); ++k) EXPECT_NEAR(parts[k], whole[k], 1e-9);
}

// The kernel's log-denominators (the linear mode joins them): log of
// Σ_j exp(s_ij) over the visible keys plus the virtual sink's exp(b).
TEST_P(ColumnMassTest, LogDenominators) {
  Problem pr(16, 64, 2, 3, 150, 20, 15);
  pr.params.sink_tokens = 2;
  pr.params.window_tokens = 50;
  pr.heads[1].virtual_sink_logit = 2.0f;
  pr.heads[4].first_token_bias = std::log(4.0f);
  std::vector<float> lse(static_cast<size_t>(pr.n_queries) * pr.n_q_heads(), NAN), out(pr.q.size());
  const SequenceAttentionParams params = pr.Params();
  for (int g = 0; g < pr.n_kv_heads; ++g) {
    AttentionQueries q = pr.Queries();
    q.lse = lse.data();
    PagedAttentionKvHead(q, pr.Kv(), params, g, out.data());
  }
  for (int i = 0; i < pr.n_queries; ++i) {
    const int32_t pos = pr.positions[i];
    for (int h = 0; h < pr.n_q_heads(); ++h) {
      const AttentionHeadParams& hp = params.heads[h];
      double sum = std::isinf(hp.virtual_sink_logit) ? 0.0 : std::exp(static_cast<double>(hp.virtual_sink_logit));
      for (int32_t j = 0; j <= pos; ++j) {
        if (!HeadKeyVisible(params, hp, pos, j)) continue;
        const size_t row = ((static_cast<size_t>(pr.page_table[j / 16]) * pr.n_kv_heads + h / pr.group) * 16 +
                            j % 16) * pr.head_dim;
        double dot = 0.0;
        for (int c = 0; c < pr.head_dim; ++c) {
          dot += static_cast<double>(pr.q[(static_cast<size_t>(i) * pr.n_q_heads() + h) * pr.head_dim + c]) *
                 Fp16ToFloat(pr.keys[row + c]);
        }
        sum += std::exp(dot * hp.logit_scale + KeyBias(params, hp, j));
      }
      EXPECT_NEAR(lse[static_cast<size_t>(i) * pr.n_q_heads() + h], std::log(sum), 1e-4) << i << " " << h;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, ColumnMassTest, testing::ValuesIn(hwy::SupportedAndGeneratedTargets()),
                         [](const testing::TestParamInfo<int64_t>& info) {
                           return std::string(hwy::TargetName(info.param));
                         });

}  // namespace
}  // namespace attnserve
