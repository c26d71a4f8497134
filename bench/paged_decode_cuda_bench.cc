// GPU decode attention (DecodeAttentionCuda) at Llama-3-8B's shapes (8 KV
// heads x 4 queries, head_dim 128, pages of 16 tokens in shuffled order):
// achieved bandwidth over the K/V bytes it must read, against the device's
// measured copy bandwidth (device-to-device cudaMemcpy of 1 GiB, read +
// write) in the same run; the DESIGN.md §7 target is >= 0.8 of it at long
// context. Batch 1-64, context 1k-128k (the pool capped at 16 GiB). Also a
// mixed-policy batch (every fourth sequence dense, the others streaming,
// duo, ACT) against the same batch all dense. And Quest (budget 2048
// tokens) at 16k-128k: its page selection and the decode over the selected
// keys as one unit, against dense decode of the same batch in the same run
// (DESIGN.md §7: >= 5x at 32k), both with L2 emptied before each call.
// Run by scripts/gpu-check.sh; without a GPU every case reports the skip
// reason.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/half.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/paged_decode.h"
#include "kernels/cuda/quest_select.h"
#include "bench/cuda_bench_util.h"

namespace attnserve {
namespace {

constexpr int kPageSize = 16, kKvHeads = 8, kGroup = 4, kHeadDim = 128;
constexpr int kQHeads = kKvHeads * kGroup;
constexpr int64_t kMaxPoolBytes = int64_t{16} << 30;
constexpr int kQuestBudgetPages = 2048 / kPageSize;

// Writes n elements at dst as repeats of `period`: the pool is far larger
// than any host buffer worth filling.
template <typename T>
void Tile(T* dst, int64_t n, const std::vector<T>& period) {
  const int64_t step = static_cast<int64_t>(period.size());
  for (int64_t off = 0; off < n; off += step) {
    cudaMemcpy(dst + off, period.data(), std::min(step, n - off) * sizeof(T), cudaMemcpyHostToDevice);
  }
}

// One layer of `batch` sequences of `context` tokens each, in one pool.
struct Batch {
  std::vector<DeviceBuffer> buffers;
  DeviceBuffer seqs, q, out, workspace;
  DecodeAttentionArgs args;
  size_t workspace_bytes = 0;
  int64_t kv_bytes = 0;  // bytes of K and V the launch must read
  // Quest (AddQuest): the selection, and decode over the keys it selects.
  QuestSelectArgs quest_select;
  DecodeAttentionArgs quest_decode;
  DeviceBuffer quest_workspace;
  size_t quest_workspace_bytes = 0;
  std::vector<fp16_t> fill;  // the period the keys and values repeat with
  std::vector<DecodeSequence> table;

  template <typename T>
  const T* Keep(const std::vector<T>& v) {
    buffers.push_back(DeviceBuffer::Allocate(v.size() * sizeof(T)).value());
    (void)buffers.back().CopyFromHost(v.data(), v.size() * sizeof(T));
    return buffers.back().as<T>();
  }

  // mixed: sequence i gets policy i % 4 (dense, streaming, duo, ACT).
  Batch(int batch, int context, bool mixed) {
    const int pages_per_seq = (context + kPageSize - 1) / kPageSize;
    const int64_t pages = static_cast<int64_t>(batch) * pages_per_seq;
    const int64_t elements = pages * kKvHeads * kPageSize * kHeadDim;
    buffers.push_back(DeviceBuffer::Allocate(elements * sizeof(fp16_t)).value());
    fp16_t* keys = buffers.back().as<fp16_t>();
    buffers.push_back(DeviceBuffer::Allocate(elements * sizeof(fp16_t)).value());
    fp16_t* values = buffers.back().as<fp16_t>();
    // Small random values: the softmax must not saturate to one key. The
    // period is whole slices, so that each slice's keys are one slice of it.
    fill.resize(std::min<int64_t>(elements, int64_t{1} << 24));
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-0.5f, 0.5f);
    for (fp16_t& x : fill) x = FloatToFp16(u(rng));
    Tile(keys, elements, fill);
    Tile(values, elements, fill);
    std::vector<int32_t> order(pages);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const int32_t* tables = Keep(order);

    AttentionHeadParams dense;
    dense.logit_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    std::vector<AttentionHeadParams> streaming(kQHeads, dense), duo(kQHeads, dense), act(kQHeads, dense);
    for (int h = 0; h < kQHeads; ++h) {
      if (h % kGroup != 0) duo[h].sink_tokens = 64, duo[h].window_tokens = 256;
      act[h].reweight_beta = 0.4f;
      act[h].reweight_keys_size = 3;
    }
    const AttentionHeadParams* heads[4] = {Keep(std::vector<AttentionHeadParams>(kQHeads, dense)), Keep(streaming),
                                           Keep(duo), Keep(act)};
    const int32_t* act_keys = Keep(std::vector<int32_t>{3, 17, 40});

    table.resize(batch);
    for (int i = 0; i < batch; ++i) {
      const int policy = mixed ? i % 4 : 0;
      DecodeSequence& s = table[i];
      s.kv = PagedKv{keys, values, tables + static_cast<int64_t>(i) * pages_per_seq, kPageSize, kKvHeads, kHeadDim,
                     context};
      s.params.heads = heads[policy];
      s.params.reweight_keys = act_keys;
      if (policy == 1) s.params.sink_tokens = 4, s.params.window_tokens = 1024;
      s.query_pos = context - 1;
      // What the kernel reads: a streaming sequence only its sinks and window.
      const int64_t read = policy == 1 ? std::min(context, 4 + 1024) : context;
      kv_bytes += 2 * read * kKvHeads * kHeadDim * static_cast<int64_t>(sizeof(fp16_t));
    }
    seqs = DeviceBuffer::Allocate(table.size() * sizeof(DecodeSequence)).value();
    (void)seqs.CopyFromHost(table.data(), table.size() * sizeof(DecodeSequence));
    std::vector<float> qh(static_cast<size_t>(batch) * kQHeads * kHeadDim);
    for (float& x : qh) x = u(rng);
    q = DeviceBuffer::Allocate(qh.size() * sizeof(float)).value();
    (void)q.CopyFromHost(qh.data(), qh.size() * sizeof(float));
    out = DeviceBuffer::Allocate(qh.size() * sizeof(float)).value();
    workspace_bytes = DecodeAttentionWorkspaceBytes(batch, kQHeads, kHeadDim, context);
    workspace = DeviceBuffer::Allocate(workspace_bytes).value();
    args.seqs = seqs.as<DecodeSequence>();
    args.n_seqs = batch;
    args.max_tokens = context;
    args.q = q.as<float>();
    args.n_q_heads = kQHeads;
    args.n_kv_heads = kKvHeads;
    args.head_dim = kHeadDim;
    args.out = out.as<float>();
  }

  // Key bounds for every page (the elementwise min and max of its keys, as
  // KV append keeps them), Quest's selection over them with a budget of
  // budget_pages per KV head, and decode arguments that read its ranges.
  void AddQuest(int32_t budget_pages) {
    const int32_t context = table[0].kv.num_tokens, pages_per_seq = (context + kPageSize - 1) / kPageSize;
    const int64_t slices = static_cast<int64_t>(table.size()) * pages_per_seq * kKvHeads;
    std::vector<fp16_t> lo(fill.size() / kPageSize), hi(lo.size());
    for (size_t slice = 0; slice < lo.size() / kHeadDim; ++slice) {
      for (int c = 0; c < kHeadDim; ++c) {
        float mn = INFINITY, mx = -INFINITY;
        for (int t = 0; t < kPageSize; ++t) {
          const float x = Fp16ToFloat(fill[(slice * kPageSize + t) * kHeadDim + c]);
          mn = std::min(mn, x);
          mx = std::max(mx, x);
        }
        lo[slice * kHeadDim + c] = FloatToFp16(mn);
        hi[slice * kHeadDim + c] = FloatToFp16(mx);
      }
    }
    buffers.push_back(DeviceBuffer::Allocate(slices * kHeadDim * sizeof(fp16_t)).value());
    fp16_t* key_min = buffers.back().as<fp16_t>();
    Tile(key_min, slices * kHeadDim, lo);
    buffers.push_back(DeviceBuffer::Allocate(slices * kHeadDim * sizeof(fp16_t)).value());
    fp16_t* key_max = buffers.back().as<fp16_t>();
    Tile(key_max, slices * kHeadDim, hi);

    const int32_t stride = budget_pages + 1;  // the budget's pages and the own page
    buffers.push_back(DeviceBuffer::Allocate(table.size() * kKvHeads * stride * sizeof(KeyRange)).value());
    KeyRange* ranges = buffers.back().as<KeyRange>();
    buffers.push_back(DeviceBuffer::Allocate(table.size() * kKvHeads * sizeof(int32_t)).value());
    int32_t* counts = buffers.back().as<int32_t>();
    std::vector<QuestSelectSequence> select(table.size());
    std::vector<DecodeSequence> decode = table;
    for (size_t i = 0; i < table.size(); ++i) {
      QuestSelectSequence& s = select[i];
      s.kv = table[i].kv;
      s.kv.key_min = key_min;
      s.kv.key_max = key_max;
      s.query_pos = table[i].query_pos;
      s.budget_pages = budget_pages;
      s.key_ranges = ranges + i * kKvHeads * stride;
      s.num_key_ranges = counts + i * kKvHeads;
      decode[i].key_ranges = s.key_ranges;
      decode[i].num_key_ranges = s.num_key_ranges;
      decode[i].key_ranges_stride = stride;
    }
    quest_select.seqs = Keep(select);
    quest_select.n_seqs = args.n_seqs;
    quest_select.max_pages = pages_per_seq;
    quest_select.q = args.q;
    quest_select.n_q_heads = kQHeads;
    quest_select.n_kv_heads = kKvHeads;
    quest_select.head_dim = kHeadDim;
    quest_decode = args;
    quest_decode.seqs = Keep(decode);
    quest_workspace_bytes = QuestSelectWorkspaceBytes(args.n_seqs, kKvHeads, pages_per_seq);
    quest_workspace = DeviceBuffer::Allocate(quest_workspace_bytes).value();
  }

  absl::Status Dense() const { return DecodeAttentionCuda(args, workspace.data(), workspace_bytes, nullptr); }
  absl::Status Quest() const {
    if (absl::Status s = QuestSelectCuda(quest_select, quest_workspace.data(), quest_workspace_bytes, nullptr);
        !s.ok()) {
      return s;
    }
    return DecodeAttentionCuda(quest_decode, workspace.data(), workspace_bytes, nullptr);
  }
};

bool Skip(benchmark::State& state, int batch, int context) {
  std::string why;
  if (!CudaDeviceAvailable(&why)) {
    state.SkipWithError(why.c_str());
    return true;
  }
  const int64_t bytes = 2 * static_cast<int64_t>(batch) * context * kKvHeads * kHeadDim * sizeof(fp16_t);
  if (bytes > kMaxPoolBytes) {
    state.SkipWithError("pool over 16 GiB");
    return true;
  }
  return false;
}

// A first call's error (or the launch's, found by syncing) skips the case.
bool Check(benchmark::State& state, absl::Status launched) {
  if (launched.ok()) launched = CudaStreamSync(nullptr);
  if (!launched.ok()) state.SkipWithError(std::string(launched.message()).c_str());
  return launched.ok();
}

void Run(benchmark::State& state, bool mixed) {
  const int batch = static_cast<int>(state.range(0)), context = static_cast<int>(state.range(1));
  if (Skip(state, batch, context)) return;
  Batch b(batch, context, mixed);
  if (!Check(state, b.Dense())) return;
  double seconds = 0.0;
  for (auto _ : state) {
    seconds = SecondsPerCall([&] { (void)b.Dense(); }, 20);
    state.SetIterationTime(seconds);
  }
  const double gbs = b.kv_bytes / seconds / 1e9;
  state.counters["kv_GBps"] = gbs;
  state.counters["copy_GBps"] = CopyBandwidth();
  state.counters["ratio_to_copy"] = gbs / CopyBandwidth();
  state.counters["us"] = seconds * 1e6;
}

void BM_DecodeDense(benchmark::State& state) { Run(state, false); }
void BM_DecodeMixedPolicies(benchmark::State& state) { Run(state, true); }

// The counters come from the last iteration, which times dense and Quest
// back to back.
void BM_DecodeQuest(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0)), context = static_cast<int>(state.range(1));
  if (Skip(state, batch, context)) return;
  Batch b(batch, context, false);
  b.AddQuest(kQuestBudgetPages);
  if (!Check(state, b.Dense()) || !Check(state, b.Quest())) return;
  double quest = 0.0, dense = 0.0, select = 0.0;
  for (auto _ : state) {
    dense = ColdSecondsPerCall([&] { (void)b.Dense(); }, 20);
    quest = ColdSecondsPerCall([&] { (void)b.Quest(); }, 20);
    select = ColdSecondsPerCall(
        [&] { (void)QuestSelectCuda(b.quest_select, b.quest_workspace.data(), b.quest_workspace_bytes, nullptr); },
        20);
    state.SetIterationTime(quest);
  }
  state.counters["us"] = quest * 1e6;
  state.counters["select_us"] = select * 1e6;
  state.counters["dense_us"] = dense * 1e6;
  state.counters["speedup_vs_dense"] = dense / quest;
  state.counters["budget_tokens"] = kQuestBudgetPages * kPageSize;
}

void Sizes(benchmark::internal::Benchmark* b) {
  for (int batch : {1, 8, 64}) {
    for (int context : {1024, 4096, 16384, 32768, 131072}) b->Args({batch, context});
  }
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(5);
}

BENCHMARK(BM_DecodeDense)->Apply(Sizes);
BENCHMARK(BM_DecodeMixedPolicies)->Apply(Sizes);
BENCHMARK(BM_DecodeQuest)
    ->ArgsProduct({{1, 8, 64}, {16384, 32768, 131072}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->Iterations(3);

}  // namespace
}  // namespace attnserve

BENCHMARK_MAIN();
