// Scalar block decoding: the layouts of ggml_types.h as UnpackedBlock, and
// the reference dequantizer built on it.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/common/half.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_blocks.h"

namespace attnserve {
namespace {

void UnpackNibbles(const uint8_t* qs, int bias, int8_t* q) {
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = static_cast<int8_t>((qs[j] & 0xF) - bias);
    q[j + kQK / 2] = static_cast<int8_t>((qs[j] >> 4) - bias);
  }
}

// The *_5 types keep the fifth bit of element j in bit j of qh.
void UnpackFiveBits(const uint8_t* qs, const uint8_t* qh, int bias, int8_t* q) {
  uint32_t h;
  memcpy(&h, qh, sizeof(h));
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = static_cast<int8_t>(((qs[j] & 0xF) | (((h >> j) & 1) << 4)) - bias);
    q[j + kQK / 2] = static_cast<int8_t>(((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4)) - bias);
  }
}

void SetSingleGroup(UnpackedBlock* out, int size, float scale, float offset) {
  out->size = size;
  out->group = size;
  out->scale[0] = scale;
  out->offset[0] = offset;
}

}  // namespace

[[noreturn]] void UnsupportedType(const char* what, GgmlType type) {
  std::fprintf(stderr, "attnserve: %s does not support ggml type %u\n", what, static_cast<unsigned>(type));
  std::abort();
}

bool IsBlockType(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ8_1:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
    case GgmlType::kQ8_K: return true;
    default: return false;
  }
}

void UnpackBlock(GgmlType type, const void* block, UnpackedBlock* out) {
  switch (type) {
    case GgmlType::kQ4_0: {
      const auto& b = *static_cast<const BlockQ4_0*>(block);
      UnpackNibbles(b.qs, 8, out->q);
      return SetSingleGroup(out, kQK, Fp16ToFloat(b.d), 0);
    }
    case GgmlType::kQ4_1: {
      const auto& b = *static_cast<const BlockQ4_1*>(block);
      UnpackNibbles(b.qs, 0, out->q);
      return SetSingleGroup(out, kQK, Fp16ToFloat(b.d), Fp16ToFloat(b.m));
    }
    case GgmlType::kQ5_0: {
      const auto& b = *static_cast<const BlockQ5_0*>(block);
      UnpackFiveBits(b.qs, b.qh, 16, out->q);
      return SetSingleGroup(out, kQK, Fp16ToFloat(b.d), 0);
    }
    case GgmlType::kQ5_1: {
      const auto& b = *static_cast<const BlockQ5_1*>(block);
      UnpackFiveBits(b.qs, b.qh, 0, out->q);
      return SetSingleGroup(out, kQK, Fp16ToFloat(b.d), Fp16ToFloat(b.m));
    }
    case GgmlType::kQ8_0: {
      const auto& b = *static_cast<const BlockQ8_0*>(block);
      memcpy(out->q, b.qs, kQK);
      return SetSingleGroup(out, kQK, Fp16ToFloat(b.d), 0);
    }
    case GgmlType::kQ8_1: {
      const auto& b = *static_cast<const BlockQ8_1*>(block);
      memcpy(out->q, b.qs, kQK);
      return SetSingleGroup(out, kQK, Fp16ToFloat(b.d), 0);
    }
    case GgmlType::kQ8_K: {
      const auto& b = *static_cast<const BlockQ8_K*>(block);
      memcpy(out->q, b.qs, kQK_K);
      return SetSingleGroup(out, kQK_K, b.d, 0);
    }
    case GgmlType::kQ4_K: {
      const auto& b = *static_cast<const BlockQ4_K*>(block);
      const float d = Fp16ToFloat(b.d), dmin = Fp16ToFloat(b.dmin);
      out->size = kQK_K;
      out->group = 32;
      for (int j = 0; j < 8; ++j) {
        int sc, m;
        ScaleMinK4(j, b.scales, &sc, &m);
        out->scale[j] = d * sc;
        out->offset[j] = -(dmin * m);
        // Sub-blocks 2k and 2k + 1 are the low and high nibbles of qs[32k, 32k + 32).
        const uint8_t* qs = b.qs + 32 * (j / 2);
        for (int l = 0; l < 32; ++l) out->q[32 * j + l] = static_cast<int8_t>(j % 2 ? qs[l] >> 4 : qs[l] & 0xF);
      }
      return;
    }
    case GgmlType::kQ6_K: {
      const auto& b = *static_cast<const BlockQ6_K*>(block);
      const float d = Fp16ToFloat(b.d);
      out->size = kQK_K;
      out->group = 16;
      for (int g = 0; g < 16; ++g) {
        out->scale[g] = d * b.scales[g];
        out->offset[g] = 0;
      }
      for (int half = 0; half < 2; ++half) {
        const uint8_t* ql = b.ql + 64 * half;
        const uint8_t* qh = b.qh + 32 * half;
        int8_t* q = out->q + 128 * half;
        for (int l = 0; l < 32; ++l) {
          q[l] = static_cast<int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
          q[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
          q[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
          q[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
      }
      return;
    }
    default: UnsupportedType("UnpackBlock", type);
  }
}

void DequantizeRowReference(GgmlType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::kF32: memcpy(dst, src, n * sizeof(float)); return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Fp16ToFloat(static_cast<const fp16_t*>(src)[i]);
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(static_cast<const bf16_t*>(src)[i]);
      return;
    default: break;
  }
  if (!IsBlockType(type)) UnsupportedType("DequantizeRow", type);
  const GgmlTypeTraits traits = *TypeTraits(type);
  const auto* bytes = static_cast<const uint8_t*>(src);
  UnpackedBlock b;
  for (int64_t i = 0; i < n / traits.block_size; ++i) {
    UnpackBlock(type, bytes + i * traits.block_bytes, &b);
    for (int j = 0; j < b.size; ++j) {
      dst[i * b.size + j] = std::fma(b.scale[j / b.group], static_cast<float>(b.q[j]), b.offset[j / b.group]);
    }
  }
}

}  // namespace attnserve
