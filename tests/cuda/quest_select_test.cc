// QuestSelectCuda against the CPU's SelectQuestPages: the same ranges per
// sequence and KV head for budgets below, at and above the candidates,
// with and without a visible-set window, in one launch over several
// sequences; on the GPU, and on the host under the emulator (every
// machine). GPU cases skip without a device; argument checks run
// everywhere.
#include "tests/cuda_emu/device_shims.h"  // first: the kernel compiles for the emulator
#include "kernels/cuda/quest_select_kernels.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/quest.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_memory.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using testing_attention::Problem;

// A problem with its pages' key bounds, as the cache keeps them.
struct QuestCase {
  std::unique_ptr<Problem> pr;
  std::vector<fp16_t> key_min, key_max;  // [pool pages][n_kv_heads][head_dim]
  int32_t sink_tokens = 0, window_tokens = 0, budget = 0;

  QuestCase(int num_tokens, int budget_pages, int sinks, int window, uint32_t seed)
      : pr(std::make_unique<Problem>(16, 64, 2, 3, num_tokens, 1, seed)),
        sink_tokens(sinks), window_tokens(window), budget(budget_pages) {
    const size_t pool_pages = pr->keys.size() / (static_cast<size_t>(pr->n_kv_heads) * pr->page_size * pr->head_dim);
    key_min.assign(pool_pages * pr->n_kv_heads * pr->head_dim, 0);
    key_max = key_min;
    const PagedKv kv = pr->Kv();
    for (int32_t b = 0; b * pr->page_size < num_tokens; ++b) {
      for (int g = 0; g < pr->n_kv_heads; ++g) {
        for (int c = 0; c < pr->head_dim; ++c) {
          float lo = INFINITY, hi = -INFINITY;
          for (int32_t t = b * pr->page_size; t < std::min(num_tokens, (b + 1) * pr->page_size); ++t) {
            const float x = Fp16ToFloat(kv.Row(kv.keys, g, t)[c]);
            lo = std::min(lo, x);
            hi = std::max(hi, x);
          }
          const int64_t at = kv.Slice(g, b) * pr->head_dim + c;
          key_min[at] = FloatToFp16(lo);
          key_max[at] = FloatToFp16(hi);
        }
      }
    }
  }

  // The pages the ranges cover, own page included.
  std::vector<int32_t> Pages(const KeyRange* ranges, int32_t n) const {
    std::vector<int32_t> pages;
    for (int32_t r = 0; r < n; ++r) {
      for (int32_t p = ranges[r].begin / pr->page_size; p * pr->page_size < ranges[r].end; ++p) pages.push_back(p);
    }
    return pages;
  }

  // QuestPageScore of page p for KV head g, in double.
  double Score(int g, int32_t p) const {
    const PagedKv kv = pr->Kv();
    const int64_t bounds = kv.Slice(g, p) * pr->head_dim;
    double score = 0.0;
    for (int h = 0; h < pr->group; ++h) {
      for (int d = 0; d < pr->head_dim; ++d) {
        const double q = pr->q[(static_cast<int64_t>(g) * pr->group + h) * pr->head_dim + d];
        score += std::max(q * Fp16ToFloat(key_max[bounds + d]), q * Fp16ToFloat(key_min[bounds + d]));
      }
    }
    return score;
  }

  std::vector<KeyRange> Expected(int g) const {
    PagedKv kv = pr->Kv();
    kv.key_min = key_min.data();
    kv.key_max = key_max.data();
    const int32_t pos = pr->positions.back();
    std::vector<KeyRange> ranges;
    const float* q = pr->q.data() + static_cast<int64_t>(g) * pr->group * pr->head_dim;
    if (!SelectQuestPages(q, pr->group, kv, g, sink_tokens, window_tokens, pos, budget, ranges)) {
      ranges = {{0, pos + 1}};
    }
    return ranges;
  }
};

absl::Status Run(KernelBackend backend, const QuestSelectArgs& a, void* workspace, size_t bytes) {
  if (backend == KernelBackend::kEmulator) return RunQuestSelect(a, workspace, bytes, emu::Launcher{});
  if (absl::Status s = QuestSelectCuda(a, workspace, bytes, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

void ExpectSameSelection(KernelBackend backend, std::vector<QuestCase>& cases) {
  KernelMemory memory(backend);
  std::vector<KeyRange*> ranges_out;
  std::vector<int32_t*> counts_out;
  std::vector<QuestSelectSequence> seqs;
  std::vector<float> q;
  int32_t max_pages = 1;
  for (QuestCase& c : cases) {
    QuestSelectSequence s;
    s.kv = c.pr->Kv();
    s.kv.page_table = memory.Upload(c.pr->page_table);
    s.kv.key_min = memory.Upload(c.key_min);
    s.kv.key_max = memory.Upload(c.key_max);
    s.kv.keys = s.kv.values = nullptr;  // the selection reads bounds only
    s.query_pos = c.pr->positions.back();
    s.sink_tokens = c.sink_tokens;
    s.window_tokens = c.window_tokens;
    s.budget_pages = c.budget;
    s.key_ranges = memory.Allocate<KeyRange>(static_cast<size_t>(c.budget + 1) * c.pr->n_kv_heads);
    ranges_out.push_back(s.key_ranges);
    s.num_key_ranges = memory.Allocate<int32_t>(c.pr->n_kv_heads);
    counts_out.push_back(s.num_key_ranges);
    seqs.push_back(s);
    q.insert(q.end(), c.pr->q.begin(), c.pr->q.end());
    max_pages = std::max(max_pages, c.pr->num_tokens / c.pr->page_size + 1);
  }
  QuestSelectArgs a;
  a.seqs = memory.Upload(seqs);
  a.n_seqs = static_cast<int32_t>(seqs.size());
  a.max_pages = max_pages;
  a.q = memory.Upload(q);
  a.n_q_heads = cases[0].pr->n_q_heads();
  a.n_kv_heads = cases[0].pr->n_kv_heads;
  a.head_dim = cases[0].pr->head_dim;
  const size_t bytes = QuestSelectWorkspaceBytes(a.n_seqs, a.n_kv_heads, a.max_pages);
  void* workspace = memory.Allocate<unsigned char>(bytes);
  const absl::Status s = Run(backend, a, workspace, bytes);
  ASSERT_TRUE(s.ok()) << s;
  for (size_t i = 0; i < cases.size(); ++i) {
    const QuestCase& c = cases[i];
    const std::vector<int32_t> counts = memory.Download(counts_out[i], c.pr->n_kv_heads);
    const std::vector<KeyRange> ranges = memory.Download(ranges_out[i], (c.budget + 1) * c.pr->n_kv_heads);
    for (int g = 0; g < c.pr->n_kv_heads; ++g) {
      SCOPED_TRACE("sequence " + std::to_string(i) + " KV head " + std::to_string(g));
      const std::vector<KeyRange> want = c.Expected(g);
      ASSERT_TRUE(counts[g] >= 1 && counts[g] <= c.budget + 1) << counts[g];
      const std::vector<int32_t> got_pages = c.Pages(&ranges[g * (c.budget + 1)], counts[g]);
      const std::vector<int32_t> want_pages = c.Pages(want.data(), static_cast<int32_t>(want.size()));
      ASSERT_EQ(got_pages.size(), want_pages.size());
      // The two sum the scores in other orders (and the GPU fuses
      // multiply-adds): a page may only be swapped for one at a near-tie.
      std::vector<int32_t> only_got, only_want;
      std::set_difference(got_pages.begin(), got_pages.end(), want_pages.begin(), want_pages.end(),
                          std::back_inserter(only_got));
      std::set_difference(want_pages.begin(), want_pages.end(), got_pages.begin(), got_pages.end(),
                          std::back_inserter(only_want));
      for (size_t k = 0; k < only_got.size(); ++k) {
        const double a = c.Score(g, only_got[k]), b = c.Score(g, only_want[k]);
        EXPECT_NEAR(a, b, 1e-4 * (std::fabs(a) + std::fabs(b))) << "page " << only_got[k] << " for " << only_want[k];
      }
      if (only_got.empty()) {
        for (size_t r = 0; r < want.size(); ++r) {
          const KeyRange& got = ranges[g * (c.budget + 1) + r];
          EXPECT_EQ(got.begin, want[r].begin) << "range " << r;
          EXPECT_EQ(got.end, want[r].end) << "range " << r;
        }
      }
    }
  }
}

class QuestSelectCudaTest : public ::testing::TestWithParam<KernelBackend> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(GetParam()); }
};

TEST_P(QuestSelectCudaTest, SelectsWhatTheCpuSelects) {
  uint32_t seed = 1;
  for (int tokens : {1, 17, 100, 1000, 5003}) {
    for (int budget : {1, 4, 16, 64, 1000}) {
      for (int window : {0, 200}) {
        std::vector<QuestCase> cases;
        cases.emplace_back(tokens, budget, window ? 8 : 0, window, seed++);
        cases.emplace_back(tokens / 2 + 1, budget, 0, 0, seed++);
        ExpectSameSelection(GetParam(), cases);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, QuestSelectCudaTest,
                         ::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator), KernelBackendName);

TEST(QuestSelectCudaArgsTest, BadArgumentsAreRejected) {
  QuestSelectArgs a;
  a.n_seqs = 1;
  a.n_kv_heads = 2;
  a.n_q_heads = 5;
  a.head_dim = 64;
  EXPECT_EQ(QuestSelectCuda(a, nullptr, 0, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.n_q_heads = 6;
  EXPECT_EQ(QuestSelectCuda(a, nullptr, 0, nullptr).code(), absl::StatusCode::kInvalidArgument);  // null pointers
  a.n_seqs = 0;
  EXPECT_TRUE(QuestSelectCuda(a, nullptr, 0, nullptr).ok());
}

}  // namespace
}  // namespace attnserve
