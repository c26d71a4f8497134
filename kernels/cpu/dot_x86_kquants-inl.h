// Integer dot products of the K-quant types (Q4_K, Q6_K) with Q8_K
// activations, in the orders of llama.cpp's x86 kernels.
// Part of dot_x86-inl.h, which includes it once per target where
// ATTN_X86_INT, after the shared helpers: no include guard of its own.

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {

// Q4_K's 12 packed bytes as 8 scales then 8 mins, one byte each.
HWY_INLINE __m128i ScalesMinsK4(const uint8_t* packed) {
  uint32_t u[3];
  memcpy(u, packed, sizeof(u));
  const uint32_t scales_lo = u[0] & 0x3f3f3f3f;
  const uint32_t scales_hi = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
  const uint32_t mins_lo = u[1] & 0x3f3f3f3f;
  const uint32_t mins_hi = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
  return _mm_set_epi32(static_cast<int>(mins_hi), static_cast<int>(mins_lo), static_cast<int>(scales_hi),
                       static_cast<int>(scales_lo));
}

// Broadcasts int16 lane k of each 128-bit half.
HWY_INLINE __m256i BroadcastI16(__m256i v, int k) {
  return _mm256_shuffle_epi8(v, _mm256_set1_epi16(static_cast<int16_t>(0x0100 + 0x0202 * k)));
}

// The orders llama.cpp sums Q4_K rows in on this machine.
enum class Q4KOrder {
  // ggml_vec_dot_q4_K_q8_K (AVX2): per super-block an 8-lane accumulator
  // takes d_w * d_a times the lanes' integer sums and a 4-lane one
  // -dmin_w * d_a times the min terms; the result is hsum(acc) + hsum(mins).
  kVecDot,
  // The CPU_REPACK buffer's 8x8 kernels, used for Q4_K matrices of a
  // multiple of 8 rows on AVX2 (ggml_gemv/gemm_q4_K_8x8_q8_K): one integer
  // sum and one integer min term per output and step, each folded into a
  // scalar chain,
  //   acc = fma(float(sum), d_w * d_a, acc), mins = fma(float(min), dmin_w * d_a, mins),
  // the result acc - mins. gemv (activation rows past the last whole group
  // of 4) steps by super-block, gemm (the groups of 4) by 64 elements.
  kRepackedGemv,
  kRepackedGemm,
  // llama.cpp's tiled K-quant kernels (ggml-cpu/tiled, taken from 8
  // activation rows up for matrices outside CPU_REPACK): per super-block
  // one integer sum and min term per output,
  //   acc = fma(float(sum) * d_w - dmin_w * float(min), d_a, acc)
  // (the subtraction fused with its product).
  kTiled,
};

// Q4_K in ggml_vec_dot_q4_K_q8_K's order, one weight row.
template <int NB>
HWY_INLINE void DotQ4_KRows(const void* wrow, int64_t n, const Rows& r) {
  const int64_t nblocks = n / kQK_K;
  const auto* w = static_cast<const BlockQ4_K*>(wrow);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const BlockQ8_K* a[NB];
  __m256 acc[NB];
  __m128 acc_min[NB];
  for (int b = 0; b < NB; ++b) {
    a[b] = reinterpret_cast<const BlockQ8_K*>(r.act + b * r.act_stride);
    acc[b] = _mm256_setzero_ps();
    acc_min[b] = _mm_setzero_ps();
  }
  for (int64_t i = 0; i < nblocks; ++i) {
    const BlockQ4_K& x = w[i];
    const __m256i scales_mins = _mm256_cvtepu8_epi16(ScalesMinsK4(x.scales));
    const __m128i scales = _mm256_castsi256_si128(scales_mins);
    const __m128i mins = _mm256_extracti128_si256(scales_mins, 1);
    const __m256i scales2 = _mm256_set_m128i(scales, scales);
    const float dw = F16(x.d), dmin = F16(x.dmin);
    __m256i sumi[NB];
    for (int b = 0; b < NB; ++b) {
      // The min term, -dmin * sum_j min_j * (sum of sub-block j's activations).
      const __m256i bsums = LoadBytes(a[b][i].bsums);
      const __m128i sub_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
      acc_min[b] =
          _mm_fmadd_ps(_mm_set1_ps(-dmin * a[b][i].d), _mm_cvtepi32_ps(_mm_madd_epi16(mins, sub_sums)), acc_min[b]);
      sumi[b] = _mm256_setzero_si256();
    }
    // Sub-blocks 2j and 2j + 1 are the low and high nibbles of qs[32j, 32j + 32).
    for (int j = 0; j < kQK_K / 64; ++j) {
      const __m256i scale_lo = BroadcastI16(scales2, 2 * j);
      const __m256i scale_hi = BroadcastI16(scales2, 2 * j + 1);
      const __m256i bits = LoadBytes(x.qs + 32 * j);
      const __m256i q_lo = _mm256_and_si256(bits, low4);
      const __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
      for (int b = 0; b < NB; ++b) {
        const int8_t* y = a[b][i].qs + 64 * j;
        const __m256i p_lo = _mm256_madd_epi16(scale_lo, _mm256_maddubs_epi16(q_lo, LoadBytes(y)));
        const __m256i p_hi = _mm256_madd_epi16(scale_hi, _mm256_maddubs_epi16(q_hi, LoadBytes(y + 32)));
        sumi[b] = _mm256_add_epi32(sumi[b], _mm256_add_epi32(p_lo, p_hi));
      }
    }
    for (int b = 0; b < NB; ++b) {
      acc[b] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[b][i].d), _mm256_cvtepi32_ps(sumi[b]), acc[b]);
    }
  }
  for (int b = 0; b < NB; ++b) r.y[b * r.y_stride] = HorizontalSum(acc[b]) + HorizontalSum(acc_min[b]);
}

// The sums of the 4 lanes of each of v[0..L) (L <= 4), in lanes 0..L-1.
template <int L>
HWY_INLINE __m128i LaneSums4(const __m128i* v) {
  const __m128i z = _mm_setzero_si128();
  const __m128i h01 = _mm_hadd_epi32(v[0], L > 1 ? v[1] : z);
  const __m128i h23 = L > 2 ? _mm_hadd_epi32(v[2], L > 3 ? v[3] : z) : z;
  return _mm_hadd_epi32(h01, h23);
}

// Per-lane scales of the chain kernels below, lane m * NB + b for weight row
// m and activation row b: the weight block's two fp16 fields and d_a.
template <int MR, int NB>
struct ChainScales {
  __m128 w0, w1, da;
};

template <int MR, int NB>
HWY_INLINE ChainScales<MR, NB> LaneScales(const fp16_t* f0, const fp16_t* f1, const float* da) {
  // Gathered through memory: inserting lanes one by one costs more.
  HWY_ALIGN uint16_t h0[4] = {}, h1[4] = {};
  HWY_ALIGN float d[4] = {};
  for (int m = 0; m < MR; ++m) {
    for (int b = 0; b < NB; ++b) {
      h0[m * NB + b] = f0[m];
      if (f1 != nullptr) h1[m * NB + b] = f1[m];
      d[m * NB + b] = da[b];
    }
  }
  uint64_t b0, b1;
  memcpy(&b0, h0, sizeof(b0));
  memcpy(&b1, h1, sizeof(b1));
  return {_mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<int64_t>(b0))),
          _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<int64_t>(b1))), _mm_load_ps(d)};
}

template <int L>
HWY_INLINE void StoreLanes(__m128 v, int MRv, int NBv, const Rows& r) {
  HWY_ALIGN float out[4];
  _mm_store_ps(out, v);
  for (int m = 0; m < MRv; ++m) {
    for (int b = 0; b < NBv; ++b) r.y[b * r.y_stride + m] = out[m * NBv + b];
  }
}

// Q4_K in the orders whose outputs are scalar chains (all but kVecDot), for
// MR weight rows and NB activation rows at once, MR * NB <= 4: output
// (m, b) in lane m * NB + b. kRepackedGemm only with MR = 1, NB = 4.
template <int MR, int NB, Q4KOrder kOrder>
HWY_INLINE void DotQ4_KChainRows(const uint8_t* wrows, size_t w_stride, int64_t n, const Rows& r) {
  constexpr int L = MR * NB;
  static_assert(L <= 4 && kOrder != Q4KOrder::kVecDot);
  static_assert(kOrder != Q4KOrder::kRepackedGemm || (MR == 1 && NB == 4));
  const int64_t nblocks = n / kQK_K;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const BlockQ4_K* w[MR];
  for (int m = 0; m < MR; ++m) w[m] = reinterpret_cast<const BlockQ4_K*>(wrows + m * w_stride);
  const BlockQ8_K* a[NB];
  for (int b = 0; b < NB; ++b) a[b] = reinterpret_cast<const BlockQ8_K*>(r.act + b * r.act_stride);
  __m128 acc = _mm_setzero_ps(), acc_min = _mm_setzero_ps();
  for (int64_t i = 0; i < nblocks; ++i) {
    __m256i scales2[MR];
    __m128i mins[MR];
    fp16_t d[MR], dmin[MR];
    for (int m = 0; m < MR; ++m) {
      const __m256i scales_mins = _mm256_cvtepu8_epi16(ScalesMinsK4(w[m][i].scales));
      const __m128i scales = _mm256_castsi256_si128(scales_mins);
      mins[m] = _mm256_extracti128_si256(scales_mins, 1);
      scales2[m] = _mm256_set_m128i(scales, scales);
      d[m] = w[m][i].d;
      dmin[m] = w[m][i].dmin;
    }
    float da[NB];
    for (int b = 0; b < NB; ++b) da[b] = a[b][i].d;
    const ChainScales<MR, NB> sc = LaneScales<MR, NB>(d, dmin, da);
    const __m128 d_da = _mm_mul_ps(sc.w0, sc.da), dmin_da = _mm_mul_ps(sc.w1, sc.da);
    // Min terms, lane j: sub-blocks 2j, 2j + 1, min * (sum of the sub-block's activations).
    __m128i min_terms[L];
    __m256i sumi[L];
    for (int b = 0; b < NB; ++b) {
      const __m256i bsums = LoadBytes(a[b][i].bsums);
      const __m128i sub_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
      for (int m = 0; m < MR; ++m) {
        min_terms[m * NB + b] = _mm_madd_epi16(mins[m], sub_sums);
        sumi[m * NB + b] = _mm256_setzero_si256();
      }
    }
    for (int j = 0; j < kQK_K / 64; ++j) {
      __m256i part[L];
      for (int m = 0; m < MR; ++m) {
        const __m256i scale_lo = BroadcastI16(scales2[m], 2 * j);
        const __m256i scale_hi = BroadcastI16(scales2[m], 2 * j + 1);
        const __m256i bits = LoadBytes(w[m][i].qs + 32 * j);
        const __m256i q_lo = _mm256_and_si256(bits, low4);
        const __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
        for (int b = 0; b < NB; ++b) {
          const int8_t* y = a[b][i].qs + 64 * j;
          const __m256i p_lo = _mm256_madd_epi16(scale_lo, _mm256_maddubs_epi16(q_lo, LoadBytes(y)));
          const __m256i p_hi = _mm256_madd_epi16(scale_hi, _mm256_maddubs_epi16(q_hi, LoadBytes(y + 32)));
          part[m * NB + b] = _mm256_add_epi32(p_lo, p_hi);
        }
      }
      if constexpr (kOrder == Q4KOrder::kRepackedGemm) {
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(RowSumsI32<L>(part)), d_da, acc);
      } else {
        for (int l = 0; l < L; ++l) sumi[l] = _mm256_add_epi32(sumi[l], part[l]);
      }
    }
    if constexpr (kOrder == Q4KOrder::kRepackedGemm) {
      // Lanes b of the 4 steps' min terms, in step order.
      __m128 t0 = _mm_castsi128_ps(min_terms[0]), t1 = _mm_castsi128_ps(min_terms[1]);
      __m128 t2 = _mm_castsi128_ps(min_terms[2]), t3 = _mm_castsi128_ps(min_terms[3]);
      _MM_TRANSPOSE4_PS(t0, t1, t2, t3);
      for (const __m128 t : {t0, t1, t2, t3}) acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(_mm_castps_si128(t)), dmin_da, acc_min);
    } else {
      const __m128 sums = _mm_cvtepi32_ps(RowSumsI32<L>(sumi));
      const __m128 min_sums = _mm_cvtepi32_ps(LaneSums4<L>(min_terms));
      if constexpr (kOrder == Q4KOrder::kTiled) {
        acc = _mm_fmadd_ps(_mm_fnmadd_ps(sc.w1, min_sums, _mm_mul_ps(sums, sc.w0)), sc.da, acc);
      } else {
        acc = _mm_fmadd_ps(sums, d_da, acc);
        acc_min = _mm_fmadd_ps(min_sums, dmin_da, acc_min);
      }
    }
  }
  StoreLanes<L>(kOrder == Q4KOrder::kTiled ? acc : _mm_sub_ps(acc, acc_min), MR, NB, r);
}

// DotQ4_KChainRows for one activation row and 8 weight rows, lane m (AVX2
// and up: 8 float lanes).
template <Q4KOrder kOrder>
HWY_INLINE void DotQ4_KChain8Rows(const uint8_t* wrows, size_t w_stride, int64_t n, const Rows& r) {
  static_assert(kOrder == Q4KOrder::kRepackedGemv || kOrder == Q4KOrder::kTiled);
  constexpr int MR = 8;
  const int64_t nblocks = n / kQK_K;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const BlockQ4_K* w[MR];
  for (int m = 0; m < MR; ++m) w[m] = reinterpret_cast<const BlockQ4_K*>(wrows + m * w_stride);
  const auto* a = reinterpret_cast<const BlockQ8_K*>(r.act);
  __m256 acc = _mm256_setzero_ps(), acc_min = _mm256_setzero_ps();
  for (int64_t i = 0; i < nblocks; ++i) {
    const __m256i bsums = LoadBytes(a[i].bsums);
    const __m128i sub_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
    __m256i sumi[MR];
    __m128i min_terms[MR];
    HWY_ALIGN fp16_t d_bits[MR], dmin_bits[MR];
    for (int m = 0; m < MR; ++m) {
      const BlockQ4_K& x = w[m][i];
      const __m256i scales_mins = _mm256_cvtepu8_epi16(ScalesMinsK4(x.scales));
      const __m128i scales = _mm256_castsi256_si128(scales_mins);
      min_terms[m] = _mm_madd_epi16(_mm256_extracti128_si256(scales_mins, 1), sub_sums);
      const __m256i scales2 = _mm256_set_m128i(scales, scales);
      d_bits[m] = x.d;
      dmin_bits[m] = x.dmin;
      sumi[m] = _mm256_setzero_si256();
      for (int j = 0; j < kQK_K / 64; ++j) {
        const __m256i bits = LoadBytes(x.qs + 32 * j);
        const __m256i q_lo = _mm256_and_si256(bits, low4);
        const __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
        const int8_t* y = a[i].qs + 64 * j;
        const __m256i p_lo = _mm256_madd_epi16(BroadcastI16(scales2, 2 * j), _mm256_maddubs_epi16(q_lo, LoadBytes(y)));
        const __m256i p_hi =
            _mm256_madd_epi16(BroadcastI16(scales2, 2 * j + 1), _mm256_maddubs_epi16(q_hi, LoadBytes(y + 32)));
        sumi[m] = _mm256_add_epi32(sumi[m], _mm256_add_epi32(p_lo, p_hi));
      }
    }
    // Lane m: row m's sum, then its min term.
    const __m256i h01 = _mm256_hadd_epi32(sumi[0], sumi[1]), h23 = _mm256_hadd_epi32(sumi[2], sumi[3]);
    const __m256i h45 = _mm256_hadd_epi32(sumi[4], sumi[5]), h67 = _mm256_hadd_epi32(sumi[6], sumi[7]);
    const __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
    const __m256i sums_i = _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                                            _mm256_permute2x128_si256(h0123, h4567, 0x31));
    const __m256i mins_i = _mm256_set_m128i(LaneSums4<4>(min_terms + 4), LaneSums4<4>(min_terms));
    const __m256 dw = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(d_bits)));
    const __m256 dmin = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dmin_bits)));
    const __m256 da = _mm256_set1_ps(a[i].d);
    const __m256 sums = _mm256_cvtepi32_ps(sums_i), min_sums = _mm256_cvtepi32_ps(mins_i);
    if constexpr (kOrder == Q4KOrder::kTiled) {
      acc = _mm256_fmadd_ps(_mm256_fnmadd_ps(dmin, min_sums, _mm256_mul_ps(sums, dw)), da, acc);
    } else {
      acc = _mm256_fmadd_ps(sums, _mm256_mul_ps(dw, da), acc);
      acc_min = _mm256_fmadd_ps(min_sums, _mm256_mul_ps(dmin, da), acc_min);
    }
  }
  _mm256_storeu_ps(r.y, kOrder == Q4KOrder::kTiled ? acc : _mm256_sub_ps(acc, acc_min));
}

// Q6_K, one weight row with NB activation rows: the integer sums, 8 lanes
// each, of super-block i.
template <int NB>
HWY_INLINE void Q6_KSums(const BlockQ6_K& x, const BlockQ8_K* const* a, int64_t i, __m256i* sumi) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m128i scales = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.scales));
  for (int b = 0; b < NB; ++b) {
    // Quants are stored +32: take 32 * sum_g scale_g * (sum of group g) off.
    const __m256i offset = _mm256_madd_epi16(LoadBytes(a[b][i].bsums), _mm256_cvtepi8_epi16(scales));
    sumi[b] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5));
  }
  for (int half = 0; half < 2; ++half) {
    const __m256i ql0 = LoadBytes(x.ql + 64 * half);
    const __m256i ql1 = LoadBytes(x.ql + 64 * half + 32);
    const __m256i qh = LoadBytes(x.qh + 32 * half);
    // Elements 32k + l of this half, as unsigned 6-bit values.
    const __m256i q[4] = {
        _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4)),
        _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(12)), 2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), _mm256_and_si256(qh, _mm256_set1_epi8(48))),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                        _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(-64)), 2)),
    };
    for (int k = 0; k < 4; ++k) {
      // Groups g and g + 1 of 16: 8 int16 lanes of each scale.
      const int64_t g = 8 * half + 2 * k;
      const __m128i pick = _mm_set_epi64x(0x0101010101010101 * (g + 1), 0x0101010101010101 * g);
      const __m256i scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
      for (int b = 0; b < NB; ++b) {
        const __m256i y = LoadBytes(a[b][i].qs + 128 * half + 32 * k);
        sumi[b] = _mm256_add_epi32(sumi[b], _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q[k], y)));
      }
    }
  }
}

// Q6_K in the order of ggml_vec_dot_q6_K_q8_K (AVX2): an 8-lane accumulator
// of d_w * d_a times the lanes' integer sums.
template <int NB>
HWY_INLINE void DotQ6_KRows(const void* wrow, int64_t n, const Rows& r) {
  const int64_t nblocks = n / kQK_K;
  const auto* w = static_cast<const BlockQ6_K*>(wrow);
  const BlockQ8_K* a[NB];
  __m256 acc[NB];
  for (int b = 0; b < NB; ++b) {
    a[b] = reinterpret_cast<const BlockQ8_K*>(r.act + b * r.act_stride);
    acc[b] = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < nblocks; ++i) {
    __m256i sumi[NB];
    Q6_KSums<NB>(w[i], a, i, sumi);
    const float dw = F16(w[i].d);
    for (int b = 0; b < NB; ++b) {
      acc[b] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[b][i].d), _mm256_cvtepi32_ps(sumi[b]), acc[b]);
    }
  }
  for (int b = 0; b < NB; ++b) r.y[b * r.y_stride] = HorizontalSum(acc[b]);
}

// Q6_K in the order of llama.cpp's tiled K-quant kernels (ggml-cpu/tiled,
// taken from 8 activation rows up): per super-block one integer sum per
// output, then acc = fma(float(sum) * d_w, d_a, acc); MR weight rows with NB
// activation rows, MR * NB <= 4, output (m, b) in lane m * NB + b.
template <int MR, int NB>
HWY_INLINE void DotQ6_KTiledRows(const uint8_t* wrows, size_t w_stride, int64_t n, const Rows& r) {
  constexpr int L = MR * NB;
  static_assert(L <= 4);
  const int64_t nblocks = n / kQK_K;
  const BlockQ6_K* w[MR];
  for (int m = 0; m < MR; ++m) w[m] = reinterpret_cast<const BlockQ6_K*>(wrows + m * w_stride);
  const BlockQ8_K* a[NB];
  for (int b = 0; b < NB; ++b) a[b] = reinterpret_cast<const BlockQ8_K*>(r.act + b * r.act_stride);
  __m128 acc = _mm_setzero_ps();
  for (int64_t i = 0; i < nblocks; ++i) {
    __m256i sumi[L];
    fp16_t d[MR];
    for (int m = 0; m < MR; ++m) {
      Q6_KSums<NB>(w[m][i], a, i, sumi + m * NB);
      d[m] = w[m][i].d;
    }
    float da[NB];
    for (int b = 0; b < NB; ++b) da[b] = a[b][i].d;
    const ChainScales<MR, NB> sc = LaneScales<MR, NB>(d, nullptr, da);
    acc = _mm_fmadd_ps(_mm_mul_ps(_mm_cvtepi32_ps(RowSumsI32<L>(sumi)), sc.w0), sc.da, acc);
  }
  StoreLanes<L>(acc, MR, NB, r);
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();
