// Reference quantizers. They follow llama.cpp's quantize_row_*_ref, so that
// the blocks made here are those a GGUF file of the type would hold.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/common/half.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_blocks.h"

namespace attnserve {
namespace {

// Round half to even, as ggml's nearest_int. nearbyint keeps the product that
// feeds it rounded to float (an `x + magic` form could be fused into an FMA).
int NearestInt(float x) { return static_cast<int>(std::nearbyint(x)); }

// *_0 types: x = (q - 2^(bits-1)) * d, with d = max / -2^(bits-1) for the
// element of largest magnitude, which therefore lands exactly on q = 0.
template <int kBits>
float QuantizeSymmetric(const float* x, uint8_t* q) {
  constexpr int kHalf = 1 << (kBits - 1);
  constexpr int kMax = (1 << kBits) - 1;
  float amax = 0, max = 0;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -kHalf;
  const float id = d != 0 ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQK; ++j)
    q[j] = static_cast<uint8_t>(std::min(kMax, static_cast<int>(x[j] * id + (kHalf + 0.5f))));
  return d;
}

// *_1 types: x = q * d + m over the block's [min, max].
template <int kBits>
void QuantizeAffine(const float* x, uint8_t* q, float* d_out, float* m_out) {
  constexpr int kMax = (1 << kBits) - 1;
  const auto [lo, hi] = std::minmax_element(x, x + kQK);
  const float min = *lo;
  const float d = (*hi - min) / kMax;
  const float id = d != 0 ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQK; ++j) q[j] = static_cast<uint8_t>(std::min(kMax, static_cast<int>((x[j] - min) * id + 0.5f)));
  *d_out = d;
  *m_out = min;
}

void PackNibbles(const uint8_t* q, uint8_t* qs) {
  for (int j = 0; j < kQK / 2; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + kQK / 2] & 0xF) << 4));
}

void PackFifthBits(const uint8_t* q, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < kQK; ++j) h |= ((q[j] >> 4) & 1u) << j;
  memcpy(qh, &h, sizeof(h));
}

// Activation blocks: d = amax / 127 and q = x * (127 / amax) rounded half to
// even. This is the arithmetic of llama.cpp's SIMD quantizer (not of its
// scalar reference, which divides by d and rounds half away from zero); the
// model is sensitive enough to single-quant differences that the engine must
// round exactly as the reference implementation it is checked against.
float QuantizeQ8(const float* x, int8_t* q) {
  float amax = 0;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float id = amax != 0 ? 127.0f / amax : 0.0f;
  for (int j = 0; j < kQK; ++j) q[j] = static_cast<int8_t>(NearestInt(x[j] * id));
  return amax / 127;
}

void QuantizeQ8_K(const float* x, BlockQ8_K* y) {
  float amax = 0, max = 0;
  for (int j = 0; j < kQK_K; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  if (amax == 0) {
    memset(y, 0, sizeof(*y));
    return;
  }
  // -127 rather than -128 keeps every quant in [-127, 127], which the integer
  // dot products need (|q| * 2 must fit the i16 pair sums).
  const float iscale = -127.f / max;
  for (int j = 0; j < kQK_K; ++j) y->qs[j] = static_cast<int8_t>(std::min(127, NearestInt(iscale * x[j])));
  for (int g = 0; g < kQK_K / 16; ++g) {
    int sum = 0;
    for (int j = 0; j < 16; ++j) sum += y->qs[16 * g + j];
    y->bsums[g] = static_cast<int16_t>(sum);
  }
  y->d = 1 / iscale;
}

// Fits the 32 values x ≈ scale * L - neg_min with L in [0, 15] under weights
// w: the min/max grid first, then 21 slightly finer or coarser grids, each
// refined by weighted least squares (llama.cpp's make_qkx2_quants).
float FitAffine(const float* x, const float* w, uint8_t* L, float* neg_min) {
  constexpr int kN = 32, kNmax = 15, kSteps = 20;
  constexpr float kRmin = -1.f, kRdelta = 0.1f;
  float min = x[0], max = x[0], sum_w = 0, sum_x = 0;
  for (int i = 0; i < kN; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  min = std::min(min, 0.f);
  if (max == min) {
    std::fill(L, L + kN, 0);
    *neg_min = -min;
    return 0.f;
  }
  float iscale = kNmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < kN; ++i) {
    L[i] = static_cast<uint8_t>(std::clamp(NearestInt(iscale * (x[i] - min)), 0, kNmax));
    const float diff = scale * L[i] + min - x[i];
    best_error += w[i] * diff * diff;
  }
  uint8_t trial[kN];
  for (int step = 0; step <= kSteps; ++step) {
    iscale = (kRmin + kRdelta * step + kNmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < kN; ++i) {
      const int l = std::clamp(NearestInt(iscale * (x[i] - min)), 0, kNmax);
      trial[i] = static_cast<uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det <= 0) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    float error = 0;
    for (int i = 0; i < kN; ++i) {
      const float diff = this_scale * trial[i] + this_min - x[i];
      error += w[i] * diff * diff;
    }
    if (error < best_error) {
      std::copy(trial, trial + kN, L);
      best_error = error;
      scale = this_scale;
      min = this_min;
    }
  }
  *neg_min = -min;
  return scale;
}

void QuantizeQ4_K(const float* x, BlockQ4_K* y) {
  uint8_t L[kQK_K];
  float scales[8], mins[8], w[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xs[l]);
    scales[j] = FitAffine(xs, w, L + 32 * j, &mins[j]);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  memset(y->scales, 0, sizeof(y->scales));
  for (int j = 0; j < 8; ++j) {
    const int ls = std::min(63, NearestInt(inv_scale * scales[j]));
    const int lm = std::min(63, NearestInt(inv_min * mins[j]));
    if (j < 4) {
      y->scales[j] = static_cast<uint8_t>(ls);
      y->scales[j + 4] = static_cast<uint8_t>(lm);
    } else {
      y->scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
      y->scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      y->scales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  y->d = FloatToFp16(max_scale / 63.f);
  y->dmin = FloatToFp16(max_min / 63.f);
  // Requantize against the scales as stored.
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    ScaleMinK4(j, y->scales, &sc, &m);
    const float d = Fp16ToFloat(y->d) * sc;
    if (d == 0) continue;
    const float dm = Fp16ToFloat(y->dmin) * m;
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] = static_cast<uint8_t>(std::clamp(NearestInt((x[32 * j + l] + dm) / d), 0, 15));
  }
  for (int j = 0; j < kQK_K / 64; ++j) {
    for (int l = 0; l < 32; ++l) y->qs[32 * j + l] = static_cast<uint8_t>(L[64 * j + l] | (L[64 * j + 32 + l] << 4));
  }
}

// Fits the 16 values x ≈ scale * L with L in [-32, 32), weighted by x², over
// 19 grid resolutions (llama.cpp's make_qx_quants with rmse_type 1). L is
// returned offset by +32.
float FitSymmetric(const float* x, int8_t* L) {
  constexpr int kN = 16, kNmax = 32;
  float amax = 0, max = 0;
  for (int i = 0; i < kN; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < 1e-15f) {
    std::fill(L, L + kN, 0);
    return 0.f;
  }
  auto quant = [&](float iscale, int i) { return std::clamp(NearestInt(iscale * x[i]), -kNmax, kNmax - 1); };
  auto sums = [&](float iscale, float* sumlx, float* suml2) {
    *sumlx = *suml2 = 0;
    for (int i = 0; i < kN; ++i) {
      const int l = quant(iscale, i);
      const float w = x[i] * x[i];
      *sumlx += w * x[i] * l;
      *suml2 += w * l * l;
    }
  };
  auto assign = [&](float iscale) {
    for (int i = 0; i < kN; ++i) L[i] = static_cast<int8_t>(quant(iscale, i) + kNmax);
  };
  float sumlx, suml2;
  sums(-kNmax / max, &sumlx, &suml2);
  assign(-kNmax / max);
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    const float iscale = -(kNmax + 0.1f * is) / max;
    sums(iscale, &sumlx, &suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      assign(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void QuantizeQ6_K(const float* x, BlockQ6_K* y) {
  int8_t L[kQK_K];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int g = 0; g < 16; ++g) {
    scales[g] = FitSymmetric(x + 16 * g, L + 16 * g);
    if (std::fabs(scales[g]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[g]);
      max_scale = scales[g];
    }
  }
  memset(y, 0, sizeof(*y));
  if (max_abs_scale < 1e-15f) return;
  const float iscale = -128.f / max_scale;
  y->d = FloatToFp16(1 / iscale);
  for (int g = 0; g < 16; ++g) y->scales[g] = static_cast<int8_t>(std::min(127, NearestInt(iscale * scales[g])));
  for (int g = 0; g < 16; ++g) {
    const float d = Fp16ToFloat(y->d) * y->scales[g];
    if (d == 0) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * g + i] = static_cast<int8_t>(std::clamp(NearestInt(x[16 * g + i] / d), -32, 31) + 32);
  }
  // Each half of 128: ql holds the low 4 bits of elements l and l + 64 (and
  // l + 32, l + 96 in its second 32 bytes), qh the high 2 bits of all four.
  for (int half = 0; half < 2; ++half) {
    const int8_t* Lh = L + 128 * half;
    uint8_t* ql = y->ql + 64 * half;
    uint8_t* qh = y->qh + 32 * half;
    for (int l = 0; l < 32; ++l) {
      ql[l] = static_cast<uint8_t>((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                   ((Lh[l + 96] >> 4) << 6));
    }
  }
}

template <class Block, class Fn>
void ForEachBlock(void* dst, int64_t n, int block_size, Fn fn) {
  auto* y = static_cast<Block*>(dst);
  for (int64_t i = 0; i < n / block_size; ++i) fn(i * block_size, y[i]);  // fn(first element, block)
}

}  // namespace

void QuantizeRowReference(GgmlType type, const float* src, void* dst, int64_t n) {
  switch (type) {
    case GgmlType::kF32: memcpy(dst, src, n * sizeof(float)); return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) static_cast<fp16_t*>(dst)[i] = FloatToFp16(src[i]);
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) static_cast<bf16_t*>(dst)[i] = FloatToBf16(src[i]);
      return;
    case GgmlType::kQ4_0:
      return ForEachBlock<BlockQ4_0>(dst, n, kQK, [&](int64_t i, BlockQ4_0& y) {
        uint8_t q[kQK];
        y.d = FloatToFp16(QuantizeSymmetric<4>(src + i, q));
        PackNibbles(q, y.qs);
      });
    case GgmlType::kQ5_0:
      return ForEachBlock<BlockQ5_0>(dst, n, kQK, [&](int64_t i, BlockQ5_0& y) {
        uint8_t q[kQK];
        y.d = FloatToFp16(QuantizeSymmetric<5>(src + i, q));
        PackNibbles(q, y.qs);
        PackFifthBits(q, y.qh);
      });
    case GgmlType::kQ4_1:
      return ForEachBlock<BlockQ4_1>(dst, n, kQK, [&](int64_t i, BlockQ4_1& y) {
        uint8_t q[kQK];
        float d, m;
        QuantizeAffine<4>(src + i, q, &d, &m);
        y.d = FloatToFp16(d);
        y.m = FloatToFp16(m);
        PackNibbles(q, y.qs);
      });
    case GgmlType::kQ5_1:
      return ForEachBlock<BlockQ5_1>(dst, n, kQK, [&](int64_t i, BlockQ5_1& y) {
        uint8_t q[kQK];
        float d, m;
        QuantizeAffine<5>(src + i, q, &d, &m);
        y.d = FloatToFp16(d);
        y.m = FloatToFp16(m);
        PackNibbles(q, y.qs);
        PackFifthBits(q, y.qh);
      });
    case GgmlType::kQ8_0:
      return ForEachBlock<BlockQ8_0>(dst, n, kQK,
                                     [&](int64_t i, BlockQ8_0& y) { y.d = FloatToFp16(QuantizeQ8(src + i, y.qs)); });
    case GgmlType::kQ8_1:
      return ForEachBlock<BlockQ8_1>(dst, n, kQK, [&](int64_t i, BlockQ8_1& y) {
        const float d = QuantizeQ8(src + i, y.qs);
        int sum = 0;
        for (int8_t q : y.qs) sum += q;
        y.d = FloatToFp16(d);
        y.s = FloatToFp16(d * sum);
      });
    case GgmlType::kQ4_K:
      return ForEachBlock<BlockQ4_K>(dst, n, kQK_K, [&](int64_t i, BlockQ4_K& y) { QuantizeQ4_K(src + i, &y); });
    case GgmlType::kQ6_K:
      return ForEachBlock<BlockQ6_K>(dst, n, kQK_K, [&](int64_t i, BlockQ6_K& y) { QuantizeQ6_K(src + i, &y); });
    case GgmlType::kQ8_K:
      return ForEachBlock<BlockQ8_K>(dst, n, kQK_K, [&](int64_t i, BlockQ8_K& y) { QuantizeQ8_K(src + i, &y); });
  }
  UnsupportedType("QuantizeRow", type);
}

}  // namespace attnserve
