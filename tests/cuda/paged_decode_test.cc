// DecodeAttentionCuda against the CPU reference (PagedAttentionReference,
// in double) over odd sizes, both head dims, every policy hook, packed
// (by-head) page tables and a batch whose sequences all have different
// policies. GPU cases skip with the reason where no device is present (fail
// when ATTNSERVE_REQUIRE_GPU is set, as scripts/gpu-check.sh does); argument
// checks run everywhere.
#include "kernels/cuda/paged_decode.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using testing_attention::Problem;

// The GPU keeps weights in fp32 and uses the fast exp; the reference rounds
// nothing. Values are in [-2, 2].
constexpr float kTolerance = 2e-3f;

// One decode query (the problem's last position) with what the reference
// does not keep in Problem: the cache-slot queries and Quest's ranges.
struct Case {
  std::unique_ptr<Problem> pr;
  std::vector<float> sink_q;                  // empty: q for every key
  std::vector<std::vector<KeyRange>> ranges;  // per KV head; empty: none
  bool packed = false;                        // address keys through a by-head slice table

  std::vector<float> Reference() {
    std::vector<float> out(pr->q.size(), NAN);
    const SequenceAttentionParams p = pr->Params();
    for (int g = 0; g < pr->n_kv_heads; ++g) {
      AttentionQueries q = pr->Queries();
      if (!sink_q.empty()) q.sink_q = sink_q.data();
      if (!ranges.empty()) {
        q.key_ranges = ranges[g].data();
        q.num_key_ranges = static_cast<int32_t>(ranges[g].size());
      }
      std::vector<float> all(pr->q.size());
      PagedAttentionReference(q, pr->Kv(), p, all.data());
      const int64_t per_kv = static_cast<int64_t>(pr->group) * pr->head_dim;
      std::copy_n(all.begin() + g * per_kv, per_kv, out.begin() + g * per_kv);
    }
    return out;
  }
};

// The device copies of cases and the batch's DecodeSequence table.
struct DeviceBatch {
  std::vector<DeviceBuffer> buffers;
  std::vector<DecodeSequence> seqs;

  template <typename T>
  const T* Keep(const std::vector<T>& v) {
    buffers.push_back(Upload(v));
    return buffers.back().as<T>();
  }

  void Add(Case& c) {
    Problem& pr = *c.pr;
    DecodeSequence s;
    s.kv.keys = Keep(pr.keys);
    s.kv.values = Keep(pr.values);
    s.kv.page_table = Keep(pr.page_table);
    if (c.packed) {
      std::vector<int32_t> slices;
      for (int32_t page : pr.page_table) {
        for (int g = 0; g < pr.n_kv_heads; ++g) slices.push_back(page * pr.n_kv_heads + g);
      }
      s.kv.head_slices = Keep(slices);
      s.kv.head_slices_step = pr.n_kv_heads;
      s.kv.page_table = nullptr;
    }
    s.kv.page_size = pr.page_size;
    s.kv.n_kv_heads = pr.n_kv_heads;
    s.kv.head_dim = pr.head_dim;
    s.kv.num_tokens = pr.num_tokens;
    s.params = pr.Params();
    s.params.heads = Keep(pr.heads);
    s.params.spans = Keep(pr.spans);
    s.params.reweight_keys = Keep(pr.reweight_keys);
    s.query_pos = pr.positions.back();
    if (!c.ranges.empty()) {
      int32_t stride = 0;
      for (const auto& r : c.ranges) stride = std::max(stride, static_cast<int32_t>(r.size()));
      std::vector<KeyRange> flat(static_cast<size_t>(stride) * pr.n_kv_heads);
      std::vector<int32_t> counts;
      for (int g = 0; g < pr.n_kv_heads; ++g) {
        std::copy(c.ranges[g].begin(), c.ranges[g].end(), flat.begin() + g * stride);
        counts.push_back(static_cast<int32_t>(c.ranges[g].size()));
      }
      s.key_ranges = Keep(flat);
      s.num_key_ranges = Keep(counts);
      s.key_ranges_stride = stride;
    }
    seqs.push_back(s);
  }
};

// Runs the cases as one batch (same heads and head_dim) and checks each
// output against its reference (and that every lse was written).
void ExpectBatchMatches(std::vector<Case>& cases) {
  DeviceBatch batch;
  std::vector<float> q, sink_q;
  int32_t max_tokens = 1;
  bool any_sink_q = false;
  for (Case& c : cases) any_sink_q |= !c.sink_q.empty();
  for (Case& c : cases) {
    batch.Add(c);
    q.insert(q.end(), c.pr->q.begin(), c.pr->q.end());
    const std::vector<float>& sq = c.sink_q.empty() ? c.pr->q : c.sink_q;
    sink_q.insert(sink_q.end(), sq.begin(), sq.end());
    max_tokens = std::max(max_tokens, c.pr->num_tokens);
  }
  const Problem& first = *cases[0].pr;
  DecodeAttentionArgs a;
  DeviceBuffer seqs = Upload(batch.seqs), d_q = Upload(q), d_sink_q = Upload(sink_q);
  auto out = DeviceBuffer::Allocate(q.size() * sizeof(float));
  auto lse = DeviceBuffer::Allocate(cases.size() * first.n_q_heads() * sizeof(float));
  ASSERT_TRUE(out.ok() && lse.ok());
  a.seqs = seqs.as<DecodeSequence>();
  a.n_seqs = static_cast<int32_t>(cases.size());
  a.max_tokens = max_tokens;
  a.q = d_q.as<float>();
  a.sink_q = any_sink_q ? d_sink_q.as<float>() : nullptr;
  a.n_q_heads = first.n_q_heads();
  a.n_kv_heads = first.n_kv_heads;
  a.head_dim = first.head_dim;
  a.out = out->as<float>();
  a.lse = lse->as<float>();
  const size_t bytes = DecodeAttentionWorkspaceBytes(a.n_seqs, a.n_q_heads, a.head_dim, a.max_tokens);
  auto workspace = DeviceBuffer::Allocate(bytes);
  ASSERT_TRUE(workspace.ok()) << workspace.status();
  absl::Status s = DecodeAttentionCuda(a, workspace->data(), bytes, nullptr);
  ASSERT_TRUE(s.ok()) << s;
  s = CudaStreamSync(nullptr);
  ASSERT_TRUE(s.ok()) << s;
  std::vector<float> got(q.size()), lse_got(cases.size() * first.n_q_heads());
  ASSERT_TRUE(out->CopyToHost(got.data(), got.size() * sizeof(float)).ok());
  ASSERT_TRUE(lse->CopyToHost(lse_got.data(), lse_got.size() * sizeof(float)).ok());
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<float> want = cases[i].Reference();
    const std::vector<float> mine(got.begin() + i * want.size(), got.begin() + (i + 1) * want.size());
    EXPECT_LT(testing_attention::MaxAbsDiff(mine, want), kTolerance) << "sequence " << i;
    for (int h = 0; h < first.n_q_heads(); ++h) EXPECT_FALSE(std::isnan(lse_got[i * first.n_q_heads() + h]));
  }
}

// Policy hooks, each applied to a fresh problem.
using Policy = std::function<void(Case&, std::mt19937&)>;

std::vector<std::pair<std::string, Policy>> Policies() {
  return {
      {"dense", [](Case&, std::mt19937&) {}},
      {"temperature", [](Case& c, std::mt19937&) {
         for (size_t h = 0; h < c.pr->heads.size(); ++h) c.pr->heads[h].logit_scale /= 0.7f + 0.2f * h;
       }},
      {"zero_tuning", [](Case& c, std::mt19937&) { for (auto& h : c.pr->heads) h.first_token_bias = std::log(3.0f); }},
      {"emphasis", [](Case& c, std::mt19937&) {
         const int32_t n = c.pr->num_tokens;
         c.pr->spans = {{n / 5, n / 5 + 1 + n / 7}, {n / 2, n / 2 + 2}};
         c.pr->params.prompt_tokens = std::max(1, n - 2);
         for (size_t h = 0; h < c.pr->heads.size(); h += 2) c.pr->heads[h].outside_span_bias = std::log(0.01f);
       }},
      {"virtual_sink", [](Case& c, std::mt19937&) {
         for (size_t h = 0; h < c.pr->heads.size(); ++h) c.pr->heads[h].virtual_sink_logit = 0.5f * h - 1.0f;
       }},
      {"act", [](Case& c, std::mt19937& rng) {
         const int32_t n = c.pr->num_tokens;
         for (int h = 0; h < c.pr->n_q_heads(); h += 2) {
           std::vector<int32_t> set;
           for (int32_t j = 0; j < n; ++j) if (rng() % 5 == 0) set.push_back(j);
           c.pr->SetReweight(h, set, 0.4f);
         }
       }},
      {"streaming", [](Case& c, std::mt19937&) {
         c.pr->params.sink_tokens = 4;
         c.pr->params.window_tokens = 37;
       }},
      {"streaming_cache", [](Case& c, std::mt19937& rng) {
         c.pr->params.sink_tokens = 4;
         c.pr->params.window_tokens = 37;
         std::normal_distribution<float> normal(0.0f, 3.0f);
         c.sink_q.resize(c.pr->q.size());
         for (float& x : c.sink_q) x = Fp16ToFloat(FloatToFp16(normal(rng)));
       }},
      {"duo", [](Case& c, std::mt19937&) {
         for (size_t h = 1; h < c.pr->heads.size(); h += 2) {
           c.pr->heads[h].sink_tokens = 16;
           c.pr->heads[h].window_tokens = 40;
         }
       }},
      {"quest", [](Case& c, std::mt19937& rng) {
         const int32_t n = c.pr->num_tokens, ps = c.pr->page_size;
         for (int g = 0; g < c.pr->n_kv_heads; ++g) {
           std::vector<KeyRange> r;
           for (int32_t p = 0; p * ps < n - 1; ++p) {
             if (rng() % 3 == 0) r.push_back({p * ps, std::min(n - 1, (p + 1) * ps)});
           }
           r.push_back({n - 1, n});  // the query's own key
           c.ranges.push_back(r);
         }
       }},
      {"packed", [](Case& c, std::mt19937&) { c.packed = true; }},
  };
}

Case MakeCase(int num_tokens, int head_dim, int group, uint32_t seed) {
  Case c;
  c.pr = std::make_unique<Problem>(16, head_dim, 2, group, num_tokens, 1, seed);
  return c;
}

class DecodeAttentionCudaTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_GPU(); }
};

TEST_P(DecodeAttentionCudaTest, EveryPolicyMatchesTheReference) {
  const auto [num_tokens, head_dim, group] = GetParam();
  uint32_t seed = 1;
  for (const auto& [name, apply] : Policies()) {
    SCOPED_TRACE(name);
    std::vector<Case> cases;
    cases.push_back(MakeCase(num_tokens, head_dim, group, seed));
    std::mt19937 rng(seed++);
    apply(cases.back(), rng);
    ExpectBatchMatches(cases);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, DecodeAttentionCudaTest,
                         ::testing::Combine(::testing::Values(1, 3, 17, 63, 64, 65, 255, 257, 1000, 4099),
                                            ::testing::Values(64, 128), ::testing::Values(1, 3, 4)));

class DecodeAttentionCudaBatchTest : public DecodeAttentionCudaTest {};

// One launch, every sequence its own policy and length.
TEST_F(DecodeAttentionCudaBatchTest, MixedPoliciesInOneBatch) {
  std::vector<Case> cases;
  uint32_t seed = 100;
  int length = 5;
  for (const auto& [name, apply] : Policies()) {
    cases.push_back(MakeCase(length, 64, 3, seed));
    std::mt19937 rng(seed++);
    apply(cases.back(), rng);
    length = length * 2 + 7;
  }
  ExpectBatchMatches(cases);
}

TEST(DecodeAttentionCudaArgsTest, ShapesTheKernelsDoNotCoverAreRejected) {
  DecodeAttentionArgs a;
  a.n_seqs = 1;
  a.max_tokens = 10;
  a.n_q_heads = 8;
  a.n_kv_heads = 2;
  a.head_dim = 96;
  float dummy = 0.0f;
  DecodeSequence seq;
  a.seqs = &seq;
  a.q = &dummy;
  a.out = &dummy;
  EXPECT_EQ(DecodeAttentionCuda(a, &dummy, 1 << 20, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.head_dim = 64;
  a.n_q_heads = 7;  // not a multiple of the KV heads
  EXPECT_EQ(DecodeAttentionCuda(a, &dummy, 1 << 20, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.n_q_heads = 8;
  EXPECT_EQ(DecodeAttentionCuda(a, &dummy, 4, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.n_seqs = 0;
  EXPECT_TRUE(DecodeAttentionCuda(a, nullptr, 0, nullptr).ok());
}

}  // namespace
}  // namespace attnserve
