#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/matmul_dot.h"
#include "kernels/cpu/quant.h"

namespace attnserve {
namespace {

// Weight bytes per task. With several activation rows, small enough that a
// task's rows stay in L1 while each group of 4 rows passes over them; with
// one, only large enough that handing out a task (a shared atomic increment)
// is noise next to streaming its rows from DRAM.
constexpr int64_t kTileBytes = 32 * 1024;
constexpr int64_t kStreamBytes = 128 * 1024;
// Two tasks per thread: a thread slowed down by another process on its core
// can hand over part of its share, while every task stays one long run of
// consecutive rows. (Four shorter tasks per thread measured up to 1.4x
// slower on the 576-row matrices, each task paying for a new DRAM stream.)
constexpr int64_t kTasksPerThread = 2;

std::vector<float> DequantizedRow(GgmlType type, const void* row, int64_t n) {
  std::vector<float> out(n);
  DequantizeRowReference(type, row, out.data(), n);
  return out;
}

}  // namespace

void MatMul(const WeightMatrix& w, const float* x, int64_t batch, float* y, ThreadPool& pool) {
  if (w.rows == 0 || batch == 0) return;
  const GgmlType act_type = ActivationTypeFor(w.type);
  ActRows act{x, w.cols * sizeof(float), batch, nullptr, FloatUsesVecDot(w.type, w.rows, w.cols, batch),
              UsesRepackedOrder(w.type, w.rows), UsesTiledOrder(w.type, w.rows, batch)};
  std::vector<uint8_t> act_buf;
  std::vector<float> act_scales;
  if (act_type != GgmlType::kF32) {
    act.stride = RowBytes(*TypeTraits(act_type), w.cols);
    act_buf.resize(batch * act.stride);
    const int64_t scales_per_row = ActScalesPerRow(act_type, w.cols);
    act_scales.resize(batch * scales_per_row);
    pool.ParallelFor(batch, [&](int64_t b, int) {
      uint8_t* row = act_buf.data() + b * act.stride;
      QuantizeRow(act_type, x + b * w.cols, row, w.cols);
      if (scales_per_row > 0) ComputeActScales(act_type, row, w.cols, act_scales.data() + b * scales_per_row);
    });
    act.data = act_buf.data();
    act.scales = act_scales.data();
  }

  const int64_t by_threads =
      (w.rows + pool.num_threads() * kTasksPerThread - 1) / (pool.num_threads() * kTasksPerThread);
  const int64_t by_cache = (batch == 1 ? kStreamBytes : kTileBytes) / static_cast<int64_t>(w.row_bytes);
  const int64_t rows_per_task = std::max<int64_t>(1, std::min(by_threads, by_cache));
  const int64_t tasks = (w.rows + rows_per_task - 1) / rows_per_task;
  pool.ParallelFor(tasks, [&](int64_t t, int) {
    const int64_t r0 = t * rows_per_task;
    const int64_t rows = std::min(rows_per_task, w.rows - r0);
    DotTile(w.type, static_cast<const uint8_t*>(w.data) + r0 * w.row_bytes, w.row_bytes, rows, w.cols, act, y + r0,
            w.rows);
  });
}

void MatMulReference(const WeightMatrix& w, const float* x, int64_t batch, float* y) {
  for (int64_t r = 0; r < w.rows; ++r) {
    const std::vector<float> row =
        DequantizedRow(w.type, static_cast<const uint8_t*>(w.data) + r * w.row_bytes, w.cols);
    for (int64_t b = 0; b < batch; ++b) {
      double sum = 0;
      for (int64_t c = 0; c < w.cols; ++c) sum += static_cast<double>(row[c]) * x[b * w.cols + c];
      y[b * w.rows + r] = static_cast<float>(sum);
    }
  }
}

float DotRow(GgmlType type, const void* weight_row, const void* act_row, int64_t n) {
  const GgmlType act_type = ActivationTypeFor(type);
  std::vector<float> scales(ActScalesPerRow(act_type, n));
  if (!scales.empty()) ComputeActScales(act_type, act_row, n, scales.data());
  float out;
  DotTile(type, weight_row, 0, 1, n, ActRows{act_row, 0, 1, scales.data()}, &out, 1);
  return out;
}

float DotRowReference(GgmlType type, const void* weight_row, const void* act_row, int64_t n) {
  const std::vector<float> w = DequantizedRow(type, weight_row, n);
  const std::vector<float> a = DequantizedRow(ActivationTypeFor(type), act_row, n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(w[i]) * a[i];
  return static_cast<float>(sum);
}

}  // namespace attnserve
