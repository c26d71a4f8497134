// Internal to kernels/cpu: a scalar view of one quantized block, shared by
// the reference kernels, the vectorized dequantizer and the portable matmul
// fallback so that the bit layouts are decoded in exactly one place.
#pragma once

#include <cstdint>

#include "kernels/common/ggml_types.h"

namespace attnserve {

// Element i of the block is scale[i / group] * q[i] + offset[i / group].
struct UnpackedBlock {
  int size = 0;   // elements in the block
  int group = 0;  // elements sharing one scale and offset
  int8_t q[kQK_K];
  float scale[kQK_K / 16];
  float offset[kQK_K / 16];
};

// True for the block types UnpackBlock understands (all but F32/F16/BF16).
bool IsBlockType(GgmlType type);

// Decodes one block of a block type.
void UnpackBlock(GgmlType type, const void* block, UnpackedBlock* out);

// Q4_K's 6-bit scale and min of sub-block j (ggml's get_scale_min_k4).
inline void ScaleMinK4(int j, const uint8_t* packed, int* scale, int* min) {
  if (j < 4) {
    *scale = packed[j] & 63;
    *min = packed[j + 4] & 63;
  } else {
    *scale = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
    *min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
  }
}

// Aborts with a message naming the type; for types a kernel does not handle.
[[noreturn]] void UnsupportedType(const char* what, GgmlType type);

}  // namespace attnserve
