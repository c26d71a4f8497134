// Integer dot products of quantized weight rows with 8-bit activations for
// the AVX2, AVX3 and AVX3_DL targets, as llama.cpp's x86 kernels do them:
// u8 x i8 products summed in pairs to i16 (maddubs), then to i32 (madd, or
// both at once with VNNI's vpdpbusd), scaled per block in float. Highway
// 1.0.3 has no u8 x i8 pair product, hence intrinsics. Included by
// matmul_dot.cc once per target; defines ATTN_X86_INT to 1 where it
// provides the kernels. This file holds the shared helpers; the kernels are
// in one file per weight family (dot_x86_blocks32, _kquants, _bf16).

// Per-target include guard.
#if defined(ATTNSERVE_KERNELS_CPU_DOT_X86_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNSERVE_KERNELS_CPU_DOT_X86_INL_H_
#undef ATTNSERVE_KERNELS_CPU_DOT_X86_INL_H_
#else
#define ATTNSERVE_KERNELS_CPU_DOT_X86_INL_H_
#endif

#include <cstring>

#include "hwy/highway.h"
#include "kernels/common/ggml_types.h"
#include "kernels/common/half.h"
#include "kernels/cpu/matmul_dot.h"

#undef ATTN_X86_INT
#undef ATTN_HW_BF16
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define ATTN_X86_INT 1
#else
#define ATTN_X86_INT 0
#endif

#if ATTN_X86_INT
HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {

HWY_INLINE __m256i LoadBytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

HWY_INLINE float F16(fp16_t h) { return _cvtsh_ss(h); }

// 16 bytes of nibble pairs as 32 quants: low nibbles (elements 0-15), then high.
HWY_INLINE __m256i Nibbles(const uint8_t* qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

// 0xFF in byte j where bit j of the 32-bit little-endian mask is set.
HWY_INLINE __m256i BitsToBytes(const uint8_t* qh) {
  uint32_t bits;
  memcpy(&bits, qh, sizeof(bits));
  const __m256i byte_of_bit = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), byte_of_bit);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
}

// Sums of 4 adjacent products u[i] * s[i] (u unsigned) as 8 int32. The i16
// pair sums of maddubs cannot saturate: |u| <= 128 and |s| <= 127.
HWY_INLINE __m256i DotU8I8(__m256i u, __m256i s) {
#if HWY_TARGET == HWY_AVX3_DL
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// The two fp16 fields a *_1 block starts with, [d, m], in lanes 0 and 1.
HWY_INLINE __m128 LeadingHalves(const void* block) {
  int32_t bits;
  memcpy(&bits, block, sizeof(bits));
  return _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
}

HWY_INLINE int32_t HorizontalSumI32(__m128i v) {
  v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
  return _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1))));
}

// The sums of the 8 lanes of each of p[0..MR) (MR <= 4), in lanes 0..MR-1.
template <int MR>
HWY_INLINE __m128i RowSumsI32(const __m256i* p) {
  const __m256i z = _mm256_setzero_si256();
  const __m256i h01 = _mm256_hadd_epi32(p[0], MR > 1 ? p[1] : z);
  const __m256i h23 = MR > 2 ? _mm256_hadd_epi32(p[2], MR > 3 ? p[3] : z) : z;
  const __m256i h = _mm256_hadd_epi32(h01, h23);
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

HWY_INLINE float HorizontalSum(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

HWY_INLINE float HorizontalSum(__m256 v) {
  return HorizontalSum(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}


}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

// One file per weight family; they use the helpers above.
#include "kernels/cpu/dot_x86_blocks32-inl.h"
#include "kernels/cpu/dot_x86_kquants-inl.h"
#include "kernels/cpu/dot_x86_bf16-inl.h"
#endif  // ATTN_X86_INT

#endif  // per-target include guard
