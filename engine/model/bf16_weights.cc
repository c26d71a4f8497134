#include "engine/model/bf16_weights.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"
#include "kernels/cpu/quant.h"

namespace attnserve {

absl::StatusOr<std::vector<uint16_t>> StackBf16(std::span<const WeightMatrix* const> matrices) {
  if (matrices.empty()) return absl::InvalidArgumentError("StackBf16: no matrices");
  const int64_t cols = matrices[0]->cols;
  int64_t rows = 0;
  for (const WeightMatrix* m : matrices) {
    if (m->cols != cols) {
      return absl::InvalidArgumentError(absl::StrCat("StackBf16: matrices of ", cols, " and ", m->cols, " columns"));
    }
    rows += m->rows;
  }
  std::vector<uint16_t> out(static_cast<size_t>(rows * cols));
  std::vector<float> row(static_cast<size_t>(cols));
  uint16_t* dst = out.data();
  for (const WeightMatrix* m : matrices) {
    for (int64_t r = 0; r < m->rows; ++r, dst += cols) {
      DequantizeRow(m->type, static_cast<const uint8_t*>(m->data) + r * m->row_bytes, row.data(), cols);
      for (int64_t c = 0; c < cols; ++c) dst[c] = FloatToBf16(row[c]);
    }
  }
  return out;
}

}  // namespace attnserve
