// Decode attention of one query over one layer (every KV head), dense
// against Quest (page selection + the kernel over the selected pages), at
// the default model's shapes (3 KV heads x 3 queries, head_dim 64) and at
// Llama-3-8B's (8 x 4, head_dim 128). bench/quest_bench.py runs it and
// reports the ratios.
//
//   build/bench/attention_bench --benchmark_filter='smollm2'
#include <benchmark/benchmark.h>

#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/half.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/quest.h"

namespace attnserve {
namespace {

constexpr int kPageSize = 16;

struct Shape {
  const char* name;
  int n_kv_heads, group, head_dim;
};
constexpr Shape kShapes[] = {{"smollm2", 3, 3, 64}, {"llama3_8b", 8, 4, 128}};

// One sequence's layer: pages in shuffled order, random keys and values with
// per-page bounds, a decode query at the last position.
struct Layer {
  std::vector<fp16_t> keys, values, key_min, key_max;
  std::vector<int32_t> page_table;
  std::vector<float> q, out;
  int32_t pos;

  Layer(const Shape& s, int context) : pos(context - 1) {
    const int pages = (context + kPageSize - 1) / kPageSize;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    page_table.resize(pages);
    std::iota(page_table.begin(), page_table.end(), 0);
    std::shuffle(page_table.begin(), page_table.end(), rng);
    const size_t head_rows = static_cast<size_t>(pages) * s.n_kv_heads * kPageSize;
    keys.resize(head_rows * s.head_dim);
    values.resize(head_rows * s.head_dim);
    for (size_t i = 0; i < keys.size(); ++i) {
      keys[i] = FloatToFp16(normal(rng));
      values[i] = FloatToFp16(normal(rng));
    }
    key_min.assign(static_cast<size_t>(pages) * s.n_kv_heads * s.head_dim, FloatToFp16(INFINITY));
    key_max.assign(key_min.size(), FloatToFp16(-INFINITY));
    for (size_t row = 0; row < head_rows; ++row) {
      const size_t bounds = row / kPageSize * s.head_dim;
      for (int c = 0; c < s.head_dim; ++c) {
        const float x = Fp16ToFloat(keys[row * s.head_dim + c]);
        if (x < Fp16ToFloat(key_min[bounds + c])) key_min[bounds + c] = keys[row * s.head_dim + c];
        if (x > Fp16ToFloat(key_max[bounds + c])) key_max[bounds + c] = keys[row * s.head_dim + c];
      }
    }
    q.resize(static_cast<size_t>(s.n_kv_heads) * s.group * s.head_dim);
    for (float& x : q) x = normal(rng);
    out.resize(q.size());
  }
};

// budget 0: dense.
void BM_DecodeAttention(benchmark::State& state, Shape s, int budget) {
  const int context = static_cast<int>(state.range(0));
  Layer layer(s, context);
  PagedKv kv{layer.keys.data(), layer.values.data(), layer.page_table.data(), kPageSize, s.n_kv_heads,
             s.head_dim,        context};
  kv.key_min = layer.key_min.data();
  kv.key_max = layer.key_max.data();
  std::vector<AttentionHeadParams> heads(s.n_kv_heads * s.group);
  for (AttentionHeadParams& h : heads) h.logit_scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  SequenceAttentionParams params;
  params.heads = heads.data();
  std::vector<KeyRange> ranges;
  int64_t keys_read = 0;
  for (auto _ : state) {
    for (int g = 0; g < s.n_kv_heads; ++g) {
      AttentionQueries q{layer.q.data(), &layer.pos, 1, s.n_kv_heads * s.group};
      if (budget > 0 &&
          SelectQuestPages(layer.q.data() + static_cast<size_t>(g) * s.group * s.head_dim, s.group, kv, g, 0, 0,
                           layer.pos, budget / kPageSize, ranges)) {
        q.key_ranges = ranges.data();
        q.num_key_ranges = static_cast<int32_t>(ranges.size());
        for (const KeyRange& r : ranges) keys_read += r.end - r.begin;
      } else {
        keys_read += context;
      }
      PagedAttentionKvHead(q, kv, params, g, layer.out.data());
    }
    benchmark::DoNotOptimize(layer.out.data());
  }
  state.counters["keys_read"] = benchmark::Counter(static_cast<double>(keys_read) / s.n_kv_heads,
                                                   benchmark::Counter::kAvgIterations);
}

int RegisterAll() {
  for (const Shape& s : kShapes) {
    for (int budget : {0, 256, 512, 1024, 2048}) {
      const std::string name = std::string(s.name) + (budget == 0 ? "/dense" : "/quest" + std::to_string(budget));
      auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_DecodeAttention, s, budget);
      b->ArgName("context")->UseRealTime()->MinTime(0.3)->Unit(benchmark::kMicrosecond);
      for (int context : {1024, 4096, 8192, 32768}) b->Arg(context);
    }
  }
  return 0;
}

[[maybe_unused]] const int kRegistered = RegisterAll();

}  // namespace
}  // namespace attnserve

BENCHMARK_MAIN();
