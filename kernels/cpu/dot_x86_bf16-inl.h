// BF16 dot products with AVX512_BF16 (defines ATTN_HW_BF16).
// Part of dot_x86-inl.h, which includes it once per target where
// ATTN_X86_INT, after the shared helpers: no include guard of its own.

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
// BF16 rows with AVX512_BF16's vdpbf16ps, the instruction llama.cpp's BF16
// kernels use (tinyBLAS, ggml_vec_dot_bf16) and which matmul_dot.cc's
// portable emulation (DotBf16x32) reproduces; Highway 1.0.3 has no target
// for it, so callers check HasAvx512Bf16() first.
#define ATTN_BF16_ATTR __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,f16c")))

inline bool HasAvx512Bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

// _mm512_reduce_add_ps as GCC expands it (see ReduceAdd16).
ATTN_BF16_ATTR inline float ReduceAdd512(__m512 v) {
  const __m256 t8 = _mm256_add_ps(_mm512_extractf32x8_ps(v, 1), _mm512_castps512_ps256(v));
  const __m128 t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
  const __m128 t2 = _mm_add_ps(t4, _mm_permute_ps(t4, 0x4e));
  return _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)));
}

ATTN_BF16_ATTR inline __m512bh LoadBf16x32(const bf16_t* p) {
  return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p));
}

// tinyBLAS<32, __m512, __m512bh>: n is a multiple of 32.
template <int NB>
ATTN_BF16_ATTR void DotBf16RowsGemmHw(const void* wrow, int64_t n, const Rows& r) {
  const auto* w = static_cast<const bf16_t*>(wrow);
  __m512 acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 32) {
    const __m512bh wv = LoadBf16x32(w + i);
    for (int b = 0; b < NB; ++b) {
      acc[b] = _mm512_dpbf16_ps(acc[b], wv, LoadBf16x32(reinterpret_cast<const bf16_t*>(r.act + b * r.act_stride) + i));
    }
  }
  for (int b = 0; b < NB; ++b) r.y[b * r.y_stride] = ReduceAdd512(acc[b]);
}

// ggml_vec_dot_bf16 (AVX512BF16 branch).
template <int NB>
ATTN_BF16_ATTR void DotBf16RowsVecDotHw(const void* wrow, int64_t n, const Rows& r) {
  const auto* w = static_cast<const bf16_t*>(wrow);
  const int64_t np = n & ~int64_t{63};
  for (int b = 0; b < NB; ++b) {
    const auto* a = reinterpret_cast<const bf16_t*>(r.act + b * r.act_stride);
    __m512 c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps();
    for (int64_t i = 0; i < np; i += 64) {
      c1 = _mm512_dpbf16_ps(c1, LoadBf16x32(w + i), LoadBf16x32(a + i));
      c2 = _mm512_dpbf16_ps(c2, LoadBf16x32(w + i + 32), LoadBf16x32(a + i + 32));
    }
    double sum = 0;
    sum += static_cast<double>(ReduceAdd512(c1));
    sum += static_cast<double>(ReduceAdd512(c2));
    for (int64_t i = np; i < n; ++i) sum += static_cast<double>(Bf16ToFloat(w[i]) * Bf16ToFloat(a[i]));
    r.y[b * r.y_stride] = static_cast<float>(sum);
  }
}
#undef ATTN_BF16_ATTR
#define ATTN_HW_BF16 1
#else
#define ATTN_HW_BF16 0
#endif

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();
