// Weight matrices as the GPU backend's GEMMs read them: dequantized from
// their GGUF type and rounded to bf16 (round to nearest even), rows of
// several matrices stacked into one (the fused QKV and gate/up projections).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/matmul.h"

namespace attnserve {

// [Σ rows][cols] bf16 bits: the matrices' rows one after the other. The
// matrices must have the same number of columns.
absl::StatusOr<std::vector<uint16_t>> StackBf16(std::span<const WeightMatrix* const> matrices);

}  // namespace attnserve
