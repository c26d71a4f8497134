// Vectorized row conversions (Highway, dispatched at run time). Weight types
// other than F16 are quantized by the reference quantizers: that happens
// offline or in tests, never per token.
#include "kernels/cpu/quant.h"

#include <cstring>

#include "kernels/common/half.h"
#include "kernels/cpu/quant_blocks.h"

// Same targets as matmul_dot.cc, so that tests mocking a target reach both.
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/quant.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Highway emulates f16 conversions on targets without F16C by truncation;
// those targets use the exact scalar conversions of half.h instead.
#undef ATTN_NATIVE_F16
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
#define ATTN_NATIVE_F16 1
#else
#define ATTN_NATIVE_F16 0
#endif

void Fp16ToFloatRowImpl(const fp16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if ATTN_NATIVE_F16
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const auto* h = reinterpret_cast<const hwy::float16_t*>(src);
  for (; i + static_cast<int64_t>(hn::Lanes(df)) <= n; i += hn::Lanes(df)) {
    hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, dst + i);
  }
#endif
  for (; i < n; ++i) dst[i] = Fp16ToFloat(src[i]);
}

void FloatToFp16RowImpl(const float* src, fp16_t* dst, int64_t n) {
  int64_t i = 0;
#if ATTN_NATIVE_F16
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  auto* h = reinterpret_cast<hwy::float16_t*>(dst);
  for (; i + static_cast<int64_t>(hn::Lanes(df)) <= n; i += hn::Lanes(df)) {
    hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, src + i)), dh, h + i);
  }
#endif
  for (; i < n; ++i) dst[i] = FloatToFp16(src[i]);
}

// Q8_0 / Q8_1 block: returns d and the sum of the quants.
HWY_INLINE float QuantizeQ8Block(const float* x, int8_t* q, int* sum) {
  const hn::CappedTag<float, kQK> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const int n = static_cast<int>(hn::Lanes(df));
  auto vmax = hn::Zero(df);
  for (int j = 0; j < kQK; j += n) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, x + j)));
  const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
  const float d = amax / 127;
  const auto id = hn::Set(df, amax != 0 ? 127.0f / amax : 0.0f);
  auto vsum = hn::Zero(di);
  for (int j = 0; j < kQK; j += n) {
    const auto qi = hn::ConvertTo(di, hn::Round(hn::Mul(hn::LoadU(df, x + j), id)));
    hn::StoreU(hn::DemoteTo(d8, qi), d8, q + j);
    vsum = hn::Add(vsum, qi);
  }
  *sum = hn::GetLane(hn::SumOfLanes(di, vsum));
  return d;
}

HWY_INLINE void QuantizeQ8_KBlock(const float* x, BlockQ8_K* y) {
  // At most 16 lanes, so that a bsums group of 16 is whole vectors.
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const int n = static_cast<int>(hn::Lanes(df));
  auto vmax = hn::Zero(df);
  for (int j = 0; j < kQK_K; j += n) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, x + j)));
  const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
  if (amax == 0) {
    memset(y, 0, sizeof(*y));
    return;
  }
  float max = 0;  // the first element of largest magnitude, with its sign
  for (int j = 0; j < kQK_K; j += n) {
    const intptr_t k = hn::FindFirstTrue(df, hn::Eq(hn::Abs(hn::LoadU(df, x + j)), hn::Set(df, amax)));
    if (k >= 0) {
      max = x[j + k];
      break;
    }
  }
  const float iscale = -127.f / max;
  for (int g = 0; g < kQK_K; g += 16) {
    auto vsum = hn::Zero(di);
    for (int j = g; j < g + 16; j += n) {
      const auto v = hn::Round(hn::Mul(hn::LoadU(df, x + j), hn::Set(df, iscale)));
      const auto qi = hn::Min(hn::ConvertTo(di, v), hn::Set(di, 127));
      hn::StoreU(hn::DemoteTo(d8, qi), d8, y->qs + j);
      vsum = hn::Add(vsum, qi);
    }
    y->bsums[g / 16] = static_cast<int16_t>(hn::GetLane(hn::SumOfLanes(di, vsum)));
  }
  y->d = 1 / iscale;
}

void QuantizeActivationRow(GgmlType type, const float* src, void* dst, int64_t n) {
  switch (type) {
    case GgmlType::kQ8_0: {
      auto* y = static_cast<BlockQ8_0*>(dst);
      for (int64_t i = 0; i < n / kQK; ++i) {
        int sum;
        y[i].d = FloatToFp16(QuantizeQ8Block(src + i * kQK, y[i].qs, &sum));
      }
      return;
    }
    case GgmlType::kQ8_1: {
      auto* y = static_cast<BlockQ8_1*>(dst);
      for (int64_t i = 0; i < n / kQK; ++i) {
        int sum;
        const float d = QuantizeQ8Block(src + i * kQK, y[i].qs, &sum);
        y[i].d = FloatToFp16(d);
        y[i].s = FloatToFp16(d * sum);
      }
      return;
    }
    case GgmlType::kQ8_K: {
      auto* y = static_cast<BlockQ8_K*>(dst);
      for (int64_t i = 0; i < n / kQK_K; ++i) QuantizeQ8_KBlock(src + i * kQK_K, y + i);
      return;
    }
    default: UnsupportedType("QuantizeActivationRow", type);
  }
}

void Bf16ToFloatRow(const bf16_t* src, float* dst, int64_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::bfloat16_t, decltype(df)> db;
  const auto* b = reinterpret_cast<const hwy::bfloat16_t*>(src);
  int64_t i = 0;
  for (; i + static_cast<int64_t>(hn::Lanes(df)) <= n; i += hn::Lanes(df)) {
    hn::StoreU(hn::PromoteTo(df, hn::LoadU(db, b + i)), df, dst + i);
  }
  for (; i < n; ++i) dst[i] = Bf16ToFloat(src[i]);
}

// Block types: the scalar decoder yields the quants, the affine map of each
// group (at least 16 elements) is applied in vectors.
void DequantizeBlocks(GgmlType type, const void* src, float* dst, int64_t n) {
  const hn::CappedTag<float, 16> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const int lanes = static_cast<int>(hn::Lanes(df));
  const GgmlTypeTraits traits = *TypeTraits(type);
  const auto* bytes = static_cast<const uint8_t*>(src);
  UnpackedBlock b;
  for (int64_t i = 0; i < n / traits.block_size; ++i) {
    UnpackBlock(type, bytes + i * traits.block_bytes, &b);
    float* y = dst + i * b.size;
    for (int j = 0; j < b.size; j += lanes) {
      const auto scale = hn::Set(df, b.scale[j / b.group]);
      const auto offset = hn::Set(df, b.offset[j / b.group]);
      const auto q = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, b.q + j)));
      hn::StoreU(hn::MulAdd(scale, q, offset), df, y + j);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnserve {

HWY_EXPORT(Fp16ToFloatRowImpl);
HWY_EXPORT(FloatToFp16RowImpl);
HWY_EXPORT(QuantizeActivationRow);
HWY_EXPORT(Bf16ToFloatRow);
HWY_EXPORT(DequantizeBlocks);

void FloatToFp16Row(const float* src, fp16_t* dst, int64_t n) { HWY_DYNAMIC_DISPATCH(FloatToFp16RowImpl)(src, dst, n); }
void Fp16ToFloatRow(const fp16_t* src, float* dst, int64_t n) { HWY_DYNAMIC_DISPATCH(Fp16ToFloatRowImpl)(src, dst, n); }

void DequantizeRow(GgmlType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::kF32: memcpy(dst, src, n * sizeof(float)); return;
    case GgmlType::kF16: return Fp16ToFloatRow(static_cast<const fp16_t*>(src), dst, n);
    case GgmlType::kBF16: return HWY_DYNAMIC_DISPATCH(Bf16ToFloatRow)(static_cast<const bf16_t*>(src), dst, n);
    default:
      if (!IsBlockType(type)) UnsupportedType("DequantizeRow", type);
      return HWY_DYNAMIC_DISPATCH(DequantizeBlocks)(type, src, dst, n);
  }
}

void QuantizeRow(GgmlType type, const float* src, void* dst, int64_t n) {
  switch (type) {
    case GgmlType::kF16: return FloatToFp16Row(src, static_cast<fp16_t*>(dst), n);
    case GgmlType::kQ8_0:
    case GgmlType::kQ8_1:
    case GgmlType::kQ8_K: return HWY_DYNAMIC_DISPATCH(QuantizeActivationRow)(type, src, dst, n);
    default: return QuantizeRowReference(type, src, dst, n);
  }
}

// llama.cpp's vec_dot_type: types with an integer dot product pair with the
// 8-bit format of their block size, F16 and BF16 with their own type; F32 and
// the activation-only formats (Q8_1, Q8_K as weights) are multiplied in float.
GgmlType ActivationTypeFor(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::kF16: return GgmlType::kF16;
    case GgmlType::kBF16: return GgmlType::kBF16;
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ8_0: return GgmlType::kQ8_0;
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1: return GgmlType::kQ8_1;
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K: return GgmlType::kQ8_K;
    default: return GgmlType::kF32;
  }
}

}  // namespace attnserve
#endif  // HWY_ONCE
