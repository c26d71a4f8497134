// Attention problems for the CUDA attention kernels' tests: each DESIGN.md
// §4 hook as a policy applied to a fresh Problem, the double-precision
// reference of its queries, and its device copy as a DecodeSequence.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/kv/kv_cache.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/paged_decode.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_memory.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {

using testing_attention::Problem;

// A problem with what the reference does not keep in Problem: the
// cache-slot queries and Quest's ranges.
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
      // Rows [query][q head][head_dim]: KV head g's heads of every query.
      const int64_t per_kv = static_cast<int64_t>(pr->group) * pr->head_dim;
      for (int i = 0; i < pr->n_queries; ++i) {
        const int64_t at = (static_cast<int64_t>(i) * pr->n_kv_heads + g) * per_kv;
        std::copy_n(all.begin() + at, per_kv, out.begin() + at);
      }
    }
    return out;
  }
};

// The kernels' copies of cases and the batch's DecodeSequence table.
struct KernelBatch {
  explicit KernelBatch(KernelMemory& memory) : memory(memory) {}

  KernelMemory& memory;
  std::vector<DecodeSequence> seqs;

  template <typename T>
  const T* Keep(const std::vector<T>& v) {
    return memory.Upload(v);
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

// Policy hooks, each applied to a fresh problem.
using Policy = std::function<void(Case&, std::mt19937&)>;

inline std::vector<std::pair<std::string, Policy>> Policies() {
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
      {"streaming_released", [](Case& c, std::mt19937&) {
         // As the engine's tables: the pages behind the window of the
         // earliest query are given back, so a kernel that touched them
         // would read before the pool (memcheck reports it).
         Problem& pr = *c.pr;
         pr.params.sink_tokens = 4;
         pr.params.window_tokens = 37;
         const int32_t hidden_end = pr.positions.front() - pr.params.window_tokens + 1;
         for (int32_t b = 0; b < static_cast<int32_t>(pr.page_table.size()); ++b) {
           if (b * pr.page_size >= pr.params.sink_tokens && (b + 1) * pr.page_size <= hidden_end) {
             pr.page_table[b] = kReleasedPage;
           }
         }
       }},
      {"streaming_cache", [](Case& c, std::mt19937& rng) {
         c.pr->params.sink_tokens = 20;  // sink keys in three of a tile's 8-key blocks
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
      {"queries_past_fp16", [](Case& c, std::mt19937&) {
         // The same logits from queries 2^16 times larger (a model whose
         // activations overflow fp16): a kernel that rounds q to fp16 must
         // bring each row into range first.
         for (float& x : c.pr->q) x *= 65536.0f;
         for (auto& h : c.pr->heads) h.logit_scale /= 65536.0f;
       }},
  };
}

}  // namespace attnserve
