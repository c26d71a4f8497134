// MatMul throughput at the default model's shapes (SmolLM2-135M), reported
// as GB/s of weight bytes read. The `cold` variants visit, in shuffled order,
// enough copies of the matrix to overflow the last-level cache, as in decode,
// where every matrix comes from DRAM once per token and the next matrix is
// not the one after it in memory; the `hot` variants keep one copy in cache
// and measure the kernels' compute rate.
//
//   build-*/bench/matmul_bench --benchmark_filter='Q4_1.*/threads:2'
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant.h"

namespace attnserve {
namespace {

constexpr size_t kColdBytes = size_t{256} << 20;  // well above any LLC here

struct Shape {
  int64_t rows, cols;
};
// q, k/v, gate/up, down projections and the tied embedding / output.
constexpr Shape kShapes[] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
constexpr GgmlType kTypes[] = {GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_1,
                               GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kF16,  GgmlType::kF32};

void BM_MatMul(benchmark::State& state, GgmlType type, Shape shape, bool hot) {
  const int threads = static_cast<int>(state.range(0));
  const int64_t batch = state.range(1);
  const size_t row_bytes = RowBytes(*TypeTraits(type), shape.cols);
  const size_t matrix_bytes = row_bytes * shape.rows;
  const size_t copies = hot ? 1 : std::max<size_t>(2, kColdBytes / matrix_bytes);

  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<uint8_t> weights(matrix_bytes * copies);
  std::vector<float> row(shape.cols);
  for (int64_t r = 0; r < shape.rows; ++r) {
    for (float& v : row) v = normal(rng);
    QuantizeRow(type, row.data(), weights.data() + r * row_bytes, shape.cols);
  }
  for (size_t c = 1; c < copies; ++c) memcpy(weights.data() + c * matrix_bytes, weights.data(), matrix_bytes);
  std::vector<float> x(batch * shape.cols), y(batch * shape.rows);
  for (float& v : x) v = normal(rng);

  std::vector<size_t> order(copies);
  for (size_t c = 0; c < copies; ++c) order[c] = c;
  std::shuffle(order.begin(), order.end(), rng);

  ThreadPool pool(threads);
  size_t next = 0;
  for (auto _ : state) {
    const WeightMatrix w{type, weights.data() + order[next] * matrix_bytes, shape.rows, shape.cols, row_bytes};
    MatMul(w, x.data(), batch, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    next = (next + 1) % copies;
  }
  state.counters["GB/s"] =
      benchmark::Counter(1e-9 * static_cast<double>(matrix_bytes), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}

int RegisterAll() {
  for (GgmlType type : kTypes) {
    for (const Shape& shape : kShapes) {
      for (bool hot : {false, true}) {
        const std::string name = std::string(TypeTraits(type)->name) + "/" + std::to_string(shape.rows) + "x" +
                                 std::to_string(shape.cols) + (hot ? "/hot" : "/cold");
        auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_MatMul, type, shape, hot);
        b->ArgNames({"threads", "batch"})->UseRealTime()->MinTime(0.2);
        for (int threads : {1, 2}) {
          for (int batch : {1, 4, 16, 64}) {
            if (hot && batch > 1) continue;
            b->Args({threads, batch});
          }
        }
      }
    }
  }
  return 0;
}

[[maybe_unused]] const int kRegistered = RegisterAll();

}  // namespace
}  // namespace attnserve

BENCHMARK_MAIN();
