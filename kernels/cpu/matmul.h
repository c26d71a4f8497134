// Quantized matrix-vector and matrix-matrix products: Y = X · Wᵀ.
//
// W is a GGUF weight matrix of `rows` rows of `cols` elements each (GGUF
// ne[0] = cols), X holds `batch` rows of `cols` floats, Y gets `batch` rows of
// `rows` floats. Activations are quantized once per call into the weight
// type's activation format (quant.h: ActivationTypeFor) and every weight block
// is read once per call, whatever the batch: the batched forward of many
// sequences relies on that.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/ggml_types.h"
#include "kernels/cpu/thread_pool.h"

namespace attnserve {

struct WeightMatrix {
  GgmlType type = GgmlType::kF32;
  const void* data = nullptr;  // rows * row_bytes bytes
  int64_t rows = 0;            // output features
  int64_t cols = 0;            // input features, a multiple of the block size
  size_t row_bytes = 0;
};

// y[b * rows + r] = sum_c W[r][c] * x[b * cols + c]
void MatMul(const WeightMatrix& w, const float* x, int64_t batch, float* y, ThreadPool& pool);

// Same result from dequantized rows and double accumulation; for tests.
void MatMulReference(const WeightMatrix& w, const float* x, int64_t batch, float* y);

// Dot product of one weight row with activations already quantized to
// ActivationTypeFor(type); n elements. Exposed for kernel tests.
float DotRow(GgmlType type, const void* weight_row, const void* act_row, int64_t n);
float DotRowReference(GgmlType type, const void* weight_row, const void* act_row, int64_t n);

}  // namespace attnserve
