// GPU decode attention (DecodeAttentionCuda) at Llama-3-8B's shapes (8 KV
// heads x 4 queries, head_dim 128, pages of 16 tokens in shuffled order):
// achieved bandwidth over the K/V bytes it must read, against the device's
// measured copy bandwidth (device-to-device cudaMemcpy of 1 GiB, read +
// write) in the same run; the DESIGN.md §7 target is >= 0.8 of it at long
// context. Batch 1-64, context 1k-128k (the pool capped at 16 GiB). Also a
// mixed-policy batch (every fourth sequence dense, the others streaming,
// duo, ACT) against the same batch all dense. Run by scripts/gpu-check.sh;
// without a GPU every case reports the skip reason.
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
#include "bench/cuda_bench_util.h"

namespace attnserve {
namespace {

constexpr int kPageSize = 16, kKvHeads = 8, kGroup = 4, kHeadDim = 128;
constexpr int kQHeads = kKvHeads * kGroup;
constexpr int64_t kMaxPoolBytes = int64_t{16} << 30;


// One layer of `batch` sequences of `context` tokens each, in one pool.
struct Batch {
  std::vector<DeviceBuffer> buffers;
  DeviceBuffer seqs, q, out, workspace;
  DecodeAttentionArgs args;
  size_t workspace_bytes = 0;
  int64_t kv_bytes = 0;  // bytes of K and V the launch must read

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
    const fp16_t* keys = buffers.back().as<fp16_t>();
    buffers.push_back(DeviceBuffer::Allocate(elements * sizeof(fp16_t)).value());
    const fp16_t* values = buffers.back().as<fp16_t>();
    // Small random values: the softmax must not saturate to one key.
    std::vector<fp16_t> fill(std::min<int64_t>(elements, int64_t{1} << 24));
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-0.5f, 0.5f);
    for (fp16_t& x : fill) x = FloatToFp16(u(rng));
    for (int64_t off = 0; off < elements; off += static_cast<int64_t>(fill.size())) {
      const size_t n = static_cast<size_t>(std::min<int64_t>(fill.size(), elements - off)) * sizeof(fp16_t);
      cudaMemcpy(const_cast<fp16_t*>(keys) + off, fill.data(), n, cudaMemcpyHostToDevice);
      cudaMemcpy(const_cast<fp16_t*>(values) + off, fill.data(), n, cudaMemcpyHostToDevice);
    }
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

    std::vector<DecodeSequence> table(batch);
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

void Run(benchmark::State& state, bool mixed) {
  const int batch = static_cast<int>(state.range(0)), context = static_cast<int>(state.range(1));
  if (Skip(state, batch, context)) return;
  Batch b(batch, context, mixed);
  const absl::Status first = DecodeAttentionCuda(b.args, b.workspace.data(), b.workspace_bytes, nullptr);
  if (!first.ok() || !CudaStreamSync(nullptr).ok()) {
    state.SkipWithError(std::string(first.message()).c_str());
    return;
  }
  double seconds = 0.0;
  for (auto _ : state) {
    seconds = SecondsPerCall([&] { (void)DecodeAttentionCuda(b.args, b.workspace.data(), b.workspace_bytes, nullptr); },
                             20);
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

void Sizes(benchmark::internal::Benchmark* b) {
  for (int batch : {1, 8, 64}) {
    for (int context : {1024, 4096, 16384, 32768, 131072}) b->Args({batch, context});
  }
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(5);
}

BENCHMARK(BM_DecodeDense)->Apply(Sizes);
BENCHMARK(BM_DecodeMixedPolicies)->Apply(Sizes);

}  // namespace
}  // namespace attnserve

BENCHMARK_MAIN();
