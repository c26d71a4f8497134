// Conversions between float rows and the GGUF element types.
//
// Every fast (Highway) routine has a scalar reference beside it with the same
// signature and a `Reference` suffix; tests compare the two over odd sizes.
#pragma once

#include <cstdint>

#include "kernels/common/ggml_types.h"

namespace attnserve {

// Dequantizes n elements (a multiple of the type's block size) into dst.
// Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K.
void DequantizeRow(GgmlType type, const void* src, float* dst, int64_t n);
void DequantizeRowReference(GgmlType type, const void* src, float* dst, int64_t n);

// Quantizes n floats into blocks of `type`; used for activations (Q8_0, Q8_1,
// Q8_K) and by tests to make weights of every type (all supported types).
void QuantizeRow(GgmlType type, const float* src, void* dst, int64_t n);
void QuantizeRowReference(GgmlType type, const float* src, void* dst, int64_t n);

// The activation type a weight type is multiplied with, as in llama.cpp:
// Q8_0 for *_0 and Q8_0 types, Q8_1 for *_1 types, Q8_K for K types, F16 for
// F16, BF16 for BF16, F32 for F32 (and for the activation-only Q8_1/Q8_K).
GgmlType ActivationTypeFor(GgmlType weight_type);

// Bulk float <-> half conversions (F16C when available).
void FloatToFp16Row(const float* src, fp16_t* dst, int64_t n);
void Fp16ToFloatRow(const fp16_t* src, float* dst, int64_t n);

}  // namespace attnserve
