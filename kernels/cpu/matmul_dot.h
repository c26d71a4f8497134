// Internal to kernels/cpu: the per-target dot-product kernels behind MatMul.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/ggml_types.h"

namespace attnserve {

// Activation rows in ActivationTypeFor(weight type), `stride` bytes apart.
// For Q8_0 and Q8_1 rows, `scales` holds each block's [d, s] as two floats
// (s = 0 for Q8_0), ActScalesPerRow floats per row: the kernels would
// otherwise convert them from fp16 once per weight row.
struct ActRows {
  const void* data = nullptr;
  size_t stride = 0;
  int64_t count = 0;
  const float* scales = nullptr;
  // Float weight types: sum in the order of ggml's vec_dot (llama.cpp's path
  // for one activation row) rather than tinyBLAS's (FloatUsesVecDot).
  bool float_vec_dot = true;
  // Q4_0, Q4_K: sum in the order of llama.cpp's repacked kernels
  // (UsesRepackedOrder) rather than ggml's vec_dot.
  bool repacked = false;
  // Q4_K, Q6_K: sum in the order of llama.cpp's tiled kernels
  // (UsesTiledOrder).
  bool tiled = false;
};

// Whether llama.cpp on AVX2 and up multiplies a matrix of `type` and `rows`
// with the CPU_REPACK buffer's interleaved kernels (repack.cpp: Q4_0 and Q4_K
// matrices of a multiple of 8 rows), whatever the batch.
bool UsesRepackedOrder(GgmlType type, int64_t rows);

// Whether llama.cpp multiplies a Q4_K or Q6_K matrix with `batch` activation
// rows by its tiled K-quant kernels (ggml-cpu/tiled: from 8 rows up, for
// matrices outside CPU_REPACK).
bool UsesTiledOrder(GgmlType type, int64_t rows, int64_t batch);

// Whether llama.cpp multiplies a float-type (F32, F16, BF16) matrix of
// `rows` x `cols` with `batch` activation rows by ggml_vec_dot rather than
// by tinyBLAS: for one row, or where tinyBLAS declines the shape.
bool FloatUsesVecDot(GgmlType type, int64_t rows, int64_t cols, int64_t batch);

// Floats of ActRows::scales per row of `cols` elements; 0 for formats
// without (F32, Q8_K).
int64_t ActScalesPerRow(GgmlType act_type, int64_t cols);

// Fills the scales of one quantized activation row.
void ComputeActScales(GgmlType act_type, const void* row, int64_t cols, float* scales);

// A kernel's view of up to 4 activation rows (plus their ActRows::scales)
// and of where their results for the current weight row go.
struct Rows {
  const uint8_t* act;
  size_t act_stride;
  const float* scales;
  int64_t scales_stride;
  float* y;
  int64_t y_stride;
};

// For r in [0, rows) and b in [0, act.count):
//   y[b * y_stride + r] = dot(weight row r, activation row b)
// Weight rows of `type` are w_stride bytes apart. Each weight row is read
// once per 4 activation rows, so callers keep rows * w_stride cache-sized.
void DotTile(GgmlType type, const void* w, size_t w_stride, int64_t rows, int64_t cols, const ActRows& act, float* y,
             int64_t y_stride);

}  // namespace attnserve
