#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/common/half.h"

#ifndef ATTNSERVE_KERNELS_CPU_ATTENTION_SHARED
#define ATTNSERVE_KERNELS_CPU_ATTENTION_SHARED
namespace attnserve::attention_detail {

// Keys converted and scored together: small enough that the float copies of
// a block's keys and values stay in L1 for head_dim up to 128, large enough
// that page size 1 costs no more per key than page size 16.
constexpr int kBlock = 32;

struct KeyRange2 {
  KeyRange r[2];
  int n = 0;
};

// Key positions that some query of the call may see: everything up to the
// last query, minus the band that the window evicts for every query (keys in
// [sink_tokens, min_pos - window + 1)). Blocks outside are never read.
inline KeyRange2 KeysToRead(const SequenceAttentionParams& p, int32_t min_pos, int32_t max_pos) {
  KeyRange2 out;
  const int32_t end = max_pos + 1;
  const int32_t band_begin = std::max(0, p.sink_tokens);
  const int32_t band_end = std::min(end, min_pos - p.window_tokens + 1);
  if (p.window_tokens == 0 || band_begin >= band_end) {
    out.r[out.n++] = {0, end};
    return out;
  }
  if (band_begin > 0) out.r[out.n++] = {0, band_begin};
  if (band_end < end) out.r[out.n++] = {band_end, end};
  return out;
}

// Per-row online-softmax state lives in flat arrays of the scratch below.
struct Scratch {
  std::vector<float> q;        // [rows][hdp], pre-multiplied by logit_scale
  std::vector<float> acc;      // [rows][hdp]: Σ p v over keys outside the reweight set
  std::vector<float> acc_set;  // [rows][hdp]: Σ p v over the reweight set (ACT rows only)
  std::vector<float> max;      // running max, starts at the virtual sink logit
  std::vector<float> mass;     // Σ p outside the reweight set
  std::vector<float> mass_set;
  std::vector<float> keys, values;  // [kBlock][hdp] floats of the block
  std::vector<float> outside;       // [kBlock]: 1 where the key gets outside_span_bias
  std::vector<float> in_set;        // [G][kBlock]: 1 where the key is in the head's reweight set
};

inline bool Reweights(const AttentionHeadParams& h) {
  return h.reweight_beta != 1.0f && h.reweight_keys_size > 0;
}

}  // namespace attnserve::attention_detail
#endif  // ATTNSERVE_KERNELS_CPU_ATTENTION_SHARED

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using namespace attention_detail;
using DF = hn::ScalableTag<float>;

#if HWY_TARGET != HWY_SCALAR
// Adds the 128-bit blocks of v and stores the resulting 4 lanes.
template <class D, class V>
HWY_INLINE void StoreBlockSum(D d, V v, float* out4) {
  if constexpr (hn::MaxLanes(d) <= 4) {
    hn::StoreU(v, d, out4);
  } else {
    const hn::Half<D> dh;
    StoreBlockSum(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)), out4);
  }
}
#endif

// out4[i] = sum of the lanes of the i-th argument, with one transpose-add
// tree instead of four horizontal reductions.
HWY_INLINE void Sum4(DF d, hn::Vec<DF> a, hn::Vec<DF> b, hn::Vec<DF> c, hn::Vec<DF> e, float* out4) {
#if HWY_TARGET == HWY_SCALAR
  out4[0] = hn::GetLane(a);
  out4[1] = hn::GetLane(b);
  out4[2] = hn::GetLane(c);
  out4[3] = hn::GetLane(e);
#else
  const hn::RepartitionToWide<hn::RebindToUnsigned<DF>> d64;
  const auto ab = hn::BitCast(d64, hn::Add(hn::InterleaveLower(d, a, b), hn::InterleaveUpper(d, a, b)));
  const auto ce = hn::BitCast(d64, hn::Add(hn::InterleaveLower(d, c, e), hn::InterleaveUpper(d, c, e)));
  const auto sums = hn::Add(hn::BitCast(d, hn::InterleaveLower(d64, ab, ce)),
                            hn::BitCast(d, hn::InterleaveUpper(d64, ab, ce)));
  StoreBlockSum(d, sums, out4);
#endif
}

// Converts `n` rows of head_dim fp16 values to floats padded with zeros to hdp.
HWY_INLINE void ConvertRows(const fp16_t* base, const int32_t* page_table, int32_t page_size, int64_t head_stride,
                            int32_t first, int n, int hd, int hdp, float* dst) {
  const DF d;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const int N = static_cast<int>(hn::Lanes(d));
  for (int j = 0; j < n; ++j) {
    const int32_t t = first + j;
    const fp16_t* src = base + page_table[t / page_size] * head_stride + static_cast<int64_t>(t % page_size) * hd;
    float* row = dst + static_cast<int64_t>(j) * hdp;
    int c = 0;
    for (; c + N <= hd; c += N) {
      hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(src + c))), d, row + c);
    }
    for (; c < hd; ++c) row[c] = Fp16ToFloat(src[c]);
    for (; c < hdp; ++c) row[c] = 0.0f;
  }
}

// s[j] = q · k_j for the first n keys of the block.
HWY_INLINE void Scores(const float* q, const float* keys, int n, int hdp, float* s) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k = keys + static_cast<int64_t>(j) * hdp;
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    for (int c = 0; c < hdp; c += N) {
      const auto qv = hn::LoadU(d, q + c);
      a0 = hn::MulAdd(qv, hn::LoadU(d, k + c), a0);
      a1 = hn::MulAdd(qv, hn::LoadU(d, k + hdp + c), a1);
      a2 = hn::MulAdd(qv, hn::LoadU(d, k + 2 * hdp + c), a2);
      a3 = hn::MulAdd(qv, hn::LoadU(d, k + 3 * hdp + c), a3);
    }
    Sum4(d, a0, a1, a2, a3, s + j);
  }
  for (; j < n; ++j) {
    const float* k = keys + static_cast<int64_t>(j) * hdp;
    auto a = hn::Zero(d);
    for (int c = 0; c < hdp; c += N) a = hn::MulAdd(hn::LoadU(d, q + c), hn::LoadU(d, k + c), a);
    s[j] = hn::GetLane(hn::SumOfLanes(d, a));
  }
}

// acc = acc * scale + Σ_{j<n} p[j] v_j. Four head_dim vectors at a time keep
// independent FMA chains in registers across the keys.
HWY_INLINE void AccumulateValues(const float* p, const float* values, int n, int hdp, float scale, float* acc) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  const auto vs = hn::Set(d, scale);
  int c = 0;
  for (; c + 4 * N <= hdp; c += 4 * N) {
    auto a0 = hn::Mul(hn::LoadU(d, acc + c), vs), a1 = hn::Mul(hn::LoadU(d, acc + c + N), vs);
    auto a2 = hn::Mul(hn::LoadU(d, acc + c + 2 * N), vs), a3 = hn::Mul(hn::LoadU(d, acc + c + 3 * N), vs);
    for (int j = 0; j < n; ++j) {
      const auto pj = hn::Set(d, p[j]);
      const float* v = values + static_cast<int64_t>(j) * hdp + c;
      a0 = hn::MulAdd(pj, hn::LoadU(d, v), a0);
      a1 = hn::MulAdd(pj, hn::LoadU(d, v + N), a1);
      a2 = hn::MulAdd(pj, hn::LoadU(d, v + 2 * N), a2);
      a3 = hn::MulAdd(pj, hn::LoadU(d, v + 3 * N), a3);
    }
    hn::StoreU(a0, d, acc + c);
    hn::StoreU(a1, d, acc + c + N);
    hn::StoreU(a2, d, acc + c + 2 * N);
    hn::StoreU(a3, d, acc + c + 3 * N);
  }
  for (; c < hdp; c += N) {
    auto a = hn::Mul(hn::LoadU(d, acc + c), vs);
    for (int j = 0; j < n; ++j) {
      a = hn::MulAdd(hn::Set(d, p[j]), hn::LoadU(d, values + static_cast<int64_t>(j) * hdp + c), a);
    }
    hn::StoreU(a, d, acc + c);
  }
}

// p[j] = exp(s[j] - max) over padded vectors (s is -inf past n, so p is 0
// there); returns Σ p.
HWY_INLINE float ExpShifted(const float* s, int n, float max, float* p) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  const auto vmax = hn::Set(d, max);
  auto sum = hn::Zero(d);
  for (int j = 0; j < n; j += N) {
    const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, s + j), vmax));
    hn::StoreU(e, d, p + j);
    sum = hn::Add(sum, e);
  }
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

HWY_INLINE float MaxOf(const float* s, int n) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  auto m = hn::Set(d, -INFINITY);
  for (int j = 0; j < n; j += N) m = hn::Max(m, hn::LoadU(d, s + j));
  return hn::GetLane(hn::MaxOfLanes(d, m));
}

void PagedAttentionKvHeadImpl(const AttentionQueries& queries, const PagedKv& kv,
                              const SequenceAttentionParams& params, int kv_head, float* out) {
  if (queries.n_queries <= 0) return;
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  const int hd = kv.head_dim;
  const int hdp = (hd + N - 1) / N * N;
  const int G = queries.n_q_heads / kv.n_kv_heads;
  const int rows = queries.n_queries * G;
  const int64_t head_stride = static_cast<int64_t>(kv.n_kv_heads) * kv.page_size * hd;
  const fp16_t* key_base = kv.keys + static_cast<int64_t>(kv_head) * kv.page_size * hd;
  const fp16_t* value_base = kv.values + static_cast<int64_t>(kv_head) * kv.page_size * hd;
  const AttentionHeadParams* heads = params.heads + kv_head * G;

  thread_local Scratch sc;
  sc.q.assign(static_cast<size_t>(rows) * hdp, 0.0f);
  sc.acc.assign(static_cast<size_t>(rows) * hdp, 0.0f);
  sc.max.resize(rows);
  sc.mass.assign(rows, 0.0f);
  sc.mass_set.assign(rows, 0.0f);
  sc.keys.resize(static_cast<size_t>(kBlock) * hdp);
  sc.values.resize(static_cast<size_t>(kBlock) * hdp);
  sc.outside.resize(kBlock);
  sc.in_set.resize(static_cast<size_t>(G) * kBlock);

  bool any_span_bias = false, any_reweight = false;
  for (int g = 0; g < G; ++g) {
    any_span_bias |= heads[g].outside_span_bias != 0.0f;
    any_reweight |= Reweights(heads[g]);
  }
  if (any_reweight) sc.acc_set.assign(static_cast<size_t>(rows) * hdp, 0.0f);

  int32_t min_pos = queries.positions[0], max_pos = queries.positions[0];
  for (int i = 0; i < queries.n_queries; ++i) {
    min_pos = std::min(min_pos, queries.positions[i]);
    max_pos = std::max(max_pos, queries.positions[i]);
    for (int g = 0; g < G; ++g) {
      const int r = i * G + g;
      const float* qsrc = queries.q + (static_cast<int64_t>(i) * queries.n_q_heads + kv_head * G + g) * hd;
      for (int c = 0; c < hd; ++c) sc.q[static_cast<size_t>(r) * hdp + c] = qsrc[c] * heads[g].logit_scale;
      sc.max[r] = heads[g].virtual_sink_logit;
    }
  }

  // Scores and weights of one row over the block, padded with -inf / 0.
  alignas(64) float s[kBlock + 16];
  alignas(64) float p[kBlock + 16];
  alignas(64) float p_set[kBlock + 16];

  const KeyRange2 ranges = KeysToRead(params, min_pos, max_pos);
  for (int ri = 0; ri < ranges.n; ++ri) {
    for (int32_t b0 = ranges.r[ri].begin; b0 < ranges.r[ri].end; b0 += kBlock) {
      const int nb = std::min(kBlock, ranges.r[ri].end - b0);
      ConvertRows(key_base, kv.page_table, kv.page_size, head_stride, b0, nb, hd, hdp, sc.keys.data());
      ConvertRows(value_base, kv.page_table, kv.page_size, head_stride, b0, nb, hd, hdp, sc.values.data());
      if (any_span_bias) {
        for (int j = 0; j < nb; ++j) {
          const int32_t t = b0 + j;
          sc.outside[j] = t < params.prompt_tokens && !InSpans(params, t) ? 1.0f : 0.0f;
        }
      }
      for (int g = 0; g < G; ++g) {
        if (!Reweights(heads[g])) continue;
        // Walk the sorted set from the block's first key.
        const int32_t* keys = params.reweight_keys + heads[g].reweight_keys_begin;
        const int32_t* end = keys + heads[g].reweight_keys_size;
        const int32_t* it = std::lower_bound(keys, end, b0);
        float* mask = &sc.in_set[static_cast<size_t>(g) * kBlock];
        for (int j = 0; j < nb; ++j) {
          const bool hit = it != end && *it == b0 + j;
          mask[j] = hit ? 1.0f : 0.0f;
          it += hit;
        }
      }

      for (int i = 0; i < queries.n_queries; ++i) {
        const int32_t pos = queries.positions[i];
        const int n = std::min(nb, pos + 1 - b0);  // causal: keys [b0, b0 + n)
        if (n <= 0) continue;
        // Keys in [band_lo, band_hi) are evicted by the window for this query.
        int band_lo = 0, band_hi = 0;
        if (params.window_tokens > 0) {
          band_lo = std::max(params.sink_tokens, b0) - b0;
          band_hi = std::min(pos - params.window_tokens + 1, b0 + n) - b0;
          if (band_lo == 0 && band_hi >= n) continue;
        }
        const int n_pad = (n + N - 1) / N * N;
        for (int g = 0; g < G; ++g) {
          const AttentionHeadParams& h = heads[g];
          const int r = i * G + g;
          Scores(&sc.q[static_cast<size_t>(r) * hdp], sc.keys.data(), n, hdp, s);
          for (int j = n; j < n_pad; ++j) s[j] = -INFINITY;
          for (int j = band_lo; j < band_hi; ++j) s[j] = -INFINITY;
          if (b0 == 0) s[0] += h.first_token_bias;
          if (h.outside_span_bias != 0.0f) {
            for (int j = 0; j < n; ++j) {
              if (sc.outside[j] != 0.0f) s[j] += h.outside_span_bias;
            }
          }
          const float block_max = MaxOf(s, n_pad);
          if (block_max == -INFINITY) continue;
          const float old_max = sc.max[r];
          const float new_max = std::max(old_max, block_max);
          const float rescale = old_max == new_max ? 1.0f : std::exp(old_max - new_max);
          sc.max[r] = new_max;
          const float sum = ExpShifted(s, n_pad, new_max, p);
          float* acc = &sc.acc[static_cast<size_t>(r) * hdp];
          if (!Reweights(h)) {
            sc.mass[r] = sc.mass[r] * rescale + sum;
            AccumulateValues(p, sc.values.data(), n, hdp, rescale, acc);
            continue;
          }
          // ACT: the set and the rest are accumulated apart and combined at
          // the end. The rest's mass is summed, not taken as total minus set,
          // which would cancel when the set holds nearly all of it.
          const float* mask = &sc.in_set[static_cast<size_t>(g) * kBlock];
          float sum_set = 0.0f, sum_rest = 0.0f;
          for (int j = 0; j < n; ++j) {
            p_set[j] = p[j] * mask[j];
            p[j] -= p_set[j];
            sum_set += p_set[j];
            sum_rest += p[j];
          }
          sc.mass_set[r] = sc.mass_set[r] * rescale + sum_set;
          sc.mass[r] = sc.mass[r] * rescale + sum_rest;
          AccumulateValues(p, sc.values.data(), n, hdp, rescale, acc);
          AccumulateValues(p_set, sc.values.data(), n, hdp, rescale, &sc.acc_set[static_cast<size_t>(r) * hdp]);
        }
      }
    }
  }

  for (int i = 0; i < queries.n_queries; ++i) {
    for (int g = 0; g < G; ++g) {
      const AttentionHeadParams& h = heads[g];
      const int r = i * G + g;
      float* dst = out + (static_cast<int64_t>(i) * queries.n_q_heads + kv_head * G + g) * hd;
      const float sink = sc.max[r] == -INFINITY ? 0.0f : std::exp(h.virtual_sink_logit - sc.max[r]);
      const float denom = sc.mass[r] + sc.mass_set[r] + sink;
      const float* acc = &sc.acc[static_cast<size_t>(r) * hdp];
      if (denom <= 0.0f) {
        std::fill(dst, dst + hd, 0.0f);
      } else if (!Reweights(h)) {
        const float inv = 1.0f / denom;
        for (int c = 0; c < hd; ++c) dst[c] = acc[c] * inv;
      } else {
        const ReweightScales w = ComputeReweightScales(h.reweight_beta, sc.mass_set[r], sc.mass[r]);
        const float* acc_set = &sc.acc_set[static_cast<size_t>(r) * hdp];
        const float in_set = w.in_set / denom, rest = w.rest / denom;
        for (int c = 0; c < hd; ++c) dst[c] = acc_set[c] * in_set + acc[c] * rest;
      }
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnserve {

HWY_EXPORT(PagedAttentionKvHeadImpl);

void PagedAttentionKvHead(const AttentionQueries& queries, const PagedKv& kv, const SequenceAttentionParams& params,
                          int kv_head, float* out) {
  HWY_DYNAMIC_DISPATCH(PagedAttentionKvHeadImpl)(queries, kv, params, kv_head, out);
}

void PagedAttentionReference(const AttentionQueries& queries, const PagedKv& kv,
                             const SequenceAttentionParams& params, float* out) {
  const int hd = kv.head_dim;
  const int G = queries.n_q_heads / kv.n_kv_heads;
  auto row = [&](const fp16_t* base, int g, int32_t t) {
    const int64_t page = kv.page_table[t / kv.page_size];
    return base + ((page * kv.n_kv_heads + g) * kv.page_size + t % kv.page_size) * hd;
  };
  for (int i = 0; i < queries.n_queries; ++i) {
    const int32_t pos = queries.positions[i];
    for (int h = 0; h < queries.n_q_heads; ++h) {
      const AttentionHeadParams& hp = params.heads[h];
      const int g = h / G;
      const float* q = queries.q + (static_cast<int64_t>(i) * queries.n_q_heads + h) * hd;
      // Logits of the visible keys, with the additive bias.
      std::vector<double> logit(pos + 1, -INFINITY);
      std::vector<bool> visible(pos + 1, false);
      double max = hp.virtual_sink_logit;
      for (int32_t j = 0; j <= pos; ++j) {
        if (!KeyVisible(params, pos, j)) continue;
        const fp16_t* k = row(kv.keys, g, j);
        double dot = 0.0;
        for (int c = 0; c < hd; ++c) dot += static_cast<double>(q[c]) * Fp16ToFloat(k[c]);
        visible[j] = true;
        logit[j] = dot * hp.logit_scale + KeyBias(params, hp, j);
        max = std::max(max, logit[j]);
      }
      // Softmax with the virtual sink in the denominator.
      std::vector<double> prob(pos + 1, 0.0);
      double denom = std::isinf(hp.virtual_sink_logit) ? 0.0 : std::exp(hp.virtual_sink_logit - max);
      for (int32_t j = 0; j <= pos; ++j) {
        if (visible[j]) denom += prob[j] = std::exp(logit[j] - max);
      }
      for (double& pj : prob) pj /= denom;
      // ACT: the set keeps beta of its mass; the rest of the real keys absorb
      // the removed mass in proportion to their probability.
      if (hp.reweight_beta != 1.0f) {
        double mass_set = 0.0, mass_rest = 0.0;
        for (int32_t j = 0; j <= pos; ++j) {
          if (!visible[j]) continue;
          (InReweightSet(params, hp, j) ? mass_set : mass_rest) += prob[j];
        }
        if (mass_set > 0.0 && mass_rest > 0.0) {
          const double beta = hp.reweight_beta;
          for (int32_t j = 0; j <= pos; ++j) {
            prob[j] *= InReweightSet(params, hp, j) ? beta : 1.0 + (1.0 - beta) * mass_set / mass_rest;
          }
        }
      }
      std::vector<double> o(hd, 0.0);
      for (int32_t j = 0; j <= pos; ++j) {
        if (!visible[j]) continue;
        const fp16_t* v = row(kv.values, g, j);
        for (int c = 0; c < hd; ++c) o[c] += prob[j] * Fp16ToFloat(v[c]);
      }
      std::copy(o.begin(), o.end(), out + (static_cast<int64_t>(i) * queries.n_q_heads + h) * hd);
    }
  }
}

}  // namespace attnserve
#endif  // HWY_ONCE
