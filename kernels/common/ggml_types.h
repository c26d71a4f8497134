// Tensor element types and quantized block layouts of the GGUF format.
//
// The layouts are the on-disk format: a row of n elements of a block type is
// n / kBlockSize consecutive blocks. Shared by the loader, the CPU kernels and
// the CUDA kernels, so it depends on nothing but the standard library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace attnserve {

// Values are the GGUF type ids; they appear in files and must not change.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ4_K = 12,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

inline constexpr int kQK = 32;    // elements per block of the *_0/*_1 types
inline constexpr int kQK_K = 256; // elements per super-block of the K types

using fp16_t = uint16_t;  // IEEE binary16 bits
using bf16_t = uint16_t;  // bfloat16 bits

struct BlockQ4_0 { fp16_t d; uint8_t qs[kQK / 2]; };                 // x = (q - 8) * d
struct BlockQ4_1 { fp16_t d; fp16_t m; uint8_t qs[kQK / 2]; };       // x = q * d + m
struct BlockQ5_0 { fp16_t d; uint8_t qh[4]; uint8_t qs[kQK / 2]; };  // x = (q5 - 16) * d
struct BlockQ5_1 { fp16_t d; fp16_t m; uint8_t qh[4]; uint8_t qs[kQK / 2]; };
struct BlockQ8_0 { fp16_t d; int8_t qs[kQK]; };                      // x = q * d
// Q8_1 keeps s = d * sum(qs) so that dot products with the *_1 types can add
// the offset term m * s without a second pass.
struct BlockQ8_1 { fp16_t d; fp16_t s; int8_t qs[kQK]; };
// Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in `scales`.
struct BlockQ4_K { fp16_t d; fp16_t dmin; uint8_t scales[12]; uint8_t qs[kQK_K / 2]; };
// Q6_K: 16 sub-blocks of 16 with int8 scales; 4 low bits in ql, 2 high in qh.
struct BlockQ6_K { uint8_t ql[kQK_K / 2]; uint8_t qh[kQK_K / 4]; int8_t scales[kQK_K / 16]; fp16_t d; };
// Q8_K: activation format for dot products with K types; bsums are sums of 16.
struct BlockQ8_K { float d; int8_t qs[kQK_K]; int16_t bsums[kQK_K / 16]; };

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

struct GgmlTypeTraits {
  std::string_view name;
  int block_size;     // elements per block
  size_t block_bytes; // bytes per block
};

// Traits of the types this project reads; nullopt for any other id.
inline std::optional<GgmlTypeTraits> TypeTraits(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return GgmlTypeTraits{"F32", 1, 4};
    case GgmlType::kF16: return GgmlTypeTraits{"F16", 1, 2};
    case GgmlType::kBF16: return GgmlTypeTraits{"BF16", 1, 2};
    case GgmlType::kQ4_0: return GgmlTypeTraits{"Q4_0", kQK, sizeof(BlockQ4_0)};
    case GgmlType::kQ4_1: return GgmlTypeTraits{"Q4_1", kQK, sizeof(BlockQ4_1)};
    case GgmlType::kQ5_0: return GgmlTypeTraits{"Q5_0", kQK, sizeof(BlockQ5_0)};
    case GgmlType::kQ5_1: return GgmlTypeTraits{"Q5_1", kQK, sizeof(BlockQ5_1)};
    case GgmlType::kQ8_0: return GgmlTypeTraits{"Q8_0", kQK, sizeof(BlockQ8_0)};
    case GgmlType::kQ8_1: return GgmlTypeTraits{"Q8_1", kQK, sizeof(BlockQ8_1)};
    case GgmlType::kQ4_K: return GgmlTypeTraits{"Q4_K", kQK_K, sizeof(BlockQ4_K)};
    case GgmlType::kQ6_K: return GgmlTypeTraits{"Q6_K", kQK_K, sizeof(BlockQ6_K)};
    case GgmlType::kQ8_K: return GgmlTypeTraits{"Q8_K", kQK_K, sizeof(BlockQ8_K)};
  }
  return std::nullopt;
}

// Bytes of a row of n elements; n must be a multiple of the block size.
inline size_t RowBytes(const GgmlTypeTraits& t, int64_t n) {
  return static_cast<size_t>(n / t.block_size) * t.block_bytes;
}

}  // namespace attnserve
