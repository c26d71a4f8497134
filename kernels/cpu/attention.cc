#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "kernels/common/half.h"

// Numerics mirror the CPU reference this kernel is validated against
// (llama.cpp without flash attention), because small models amplify every
// rounding the two do differently into logit differences of ~1. It computes
//   KQ  = mul_mat(K_f16, q): q converted to fp16; each dot product in fp32
//         lanes, chunk after chunk of head_dim, the lanes then added by halves;
//   P   = soft_max(KQ * scale): e = exp(s - max) by a vectorised exp, Σ e as
//         per-vector float sums added in double, p = e * (1 / Σ);
//   KQV = mul_mat(V_f16, P): P converted to fp16; one fp32 lane per key
//         position mod the vector width, the lanes then added by halves.
// Those are the orders of its batched matmul (tinyBLAS). A one-token batch
// goes through its ggml_vec_dot_f16 instead, which on x86 sums four vectors
// of accumulators (4N virtual lanes, element or key position mod 4N), folds
// them by halves, then the lanes (AVX-512 by halves; AVX2 by halves to four
// lanes, then (l0+l1)+(l2+l3)), and adds the elements past the last whole
// 4N as float products in double. A call with one query (decode) follows
// that order on those targets; its keys are counted from position 0, as the
// reference's (padded, zero-weighted) KV rows are.
// Hence two passes: the logits of every visible key (over the key pages), the
// softmax of whole rows, then the values. The hooks sit where its mask does:
// bias after the scale, hidden keys at -inf, the virtual sink in max and
// denominator, ACT on the normalised p before its fp16 rounding.

#ifndef ATTNSERVE_KERNELS_CPU_ATTENTION_SHARED
#define ATTNSERVE_KERNELS_CPU_ATTENTION_SHARED
namespace attnserve::attention_detail {

// Keys (or values) converted to float together: 32 KiB at head_dim 64. Each
// row's accumulators are loaded once per block and stripe (see pass 2), so
// larger blocks cost less there.
constexpr int kBlock = 128;

// Key positions that some query of the call may see: everything up to the
// last query, minus the band that the window evicts for every query (keys in
// [sink_tokens, min_pos - window + 1)). Blocks outside are never read.
inline void KeysToRead(const SequenceAttentionParams& p, int32_t min_pos, int32_t max_pos,
                       std::vector<KeyRange>& out) {
  out.clear();
  const int32_t end = max_pos + 1;
  const int32_t band_begin = std::max(0, p.sink_tokens);
  const int32_t band_end = std::min(end, min_pos - p.window_tokens + 1);
  if (p.window_tokens == 0 || band_begin >= band_end) {
    out.push_back({0, end});
    return;
  }
  if (band_begin > 0) out.push_back({0, band_begin});
  if (band_end < end) out.push_back({band_end, end});
}

// Offsets into the block [b0, b0 + n) of the keys that a (sink, window)
// rule hides from the query at pos: [sink_tokens, pos - window_tokens].
inline KeyRange HiddenBand(int32_t sink_tokens, int32_t window_tokens, int32_t pos, int32_t b0, int n) {
  if (window_tokens == 0) return {0, 0};
  const int32_t lo = std::min<int32_t>(n, std::max(sink_tokens, b0) - b0);
  return {lo, std::max(lo, std::min<int32_t>(pos - window_tokens + 1, b0 + n) - b0)};
}

// The key ranges to read (sorted, disjoint), packed one after the other
// into the columns of the per-row logit arrays. Dense reads one range from
// 0, column == position: the softmax sums the reference's vectors of keys.
struct Columns {
  std::span<const KeyRange> ranges;
  std::span<const int32_t> first;  // [ranges + 1]: each range's first column, then the count

  int32_t Count() const { return first.back(); }
  // The column of key t, which lies in one of the ranges.
  int32_t Of(int32_t t) const {
    const auto it = std::upper_bound(ranges.begin(), ranges.end(), t,
                                     [](int32_t pos, const KeyRange& r) { return pos < r.begin; });
    const size_t i = static_cast<size_t>(it - ranges.begin()) - 1;
    return first[i] + t - ranges[i].begin;
  }
  // The column of key t, or -1 when no range holds it.
  int32_t Find(int32_t t) const {
    const auto it = std::upper_bound(ranges.begin(), ranges.end(), t,
                                     [](int32_t pos, const KeyRange& r) { return pos < r.begin; });
    if (it == ranges.begin() || t >= (it - 1)->end) return -1;
    return Of(t);
  }
  // f(column, position) for the columns [0, extent).
  template <class F>
  void ForEach(int32_t extent, F&& f) const {
    for (size_t i = 0; i < ranges.size() && first[i] < extent; ++i) {
      const int32_t n = std::min(ranges[i].end - ranges[i].begin, extent - first[i]);
      for (int32_t k = 0; k < n; ++k) f(first[i] + k, ranges[i].begin + k);
    }
  }
};

struct Scratch {
  std::vector<KeyRange> ranges;  // the keys to read
  std::vector<int32_t> first;    // their columns (Columns::first)
  std::vector<float> q;        // [rows][hdp]: queries rounded to fp16
  std::vector<float> sink_q;   // [rows][hdp]: the same of queries.sink_q, when given
  std::vector<float> logits;   // [rows][stride]: logits, then probabilities rounded to fp16
  std::vector<float> acc;      // [rows][N][hdp]: Σ p v, one accumulator per key position mod N
  std::vector<float> block;    // [kBlock][hdp]: floats of a block's keys, then of its values
  std::vector<float> outside;  // [kBlock]: 1 where the key gets outside_span_bias
};

inline bool Reweights(const AttentionHeadParams& h) {
  return h.reweight_beta != 1.0f && h.reweight_keys_size > 0;
}

template <class T>
void Grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace attnserve::attention_detail
#endif  // ATTNSERVE_KERNELS_CPU_ATTENTION_SHARED

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cpu/attention_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using namespace attention_detail;
using namespace attention_simd;

// The row's logits s[0, extent) become probabilities, reweighted by ACT and
// rounded to fp16 as the reference's KQV matmul converts them; zeros when
// nothing is visible and there is no sink. The row is used up to whole
// vectors. Returns log of the softmax's denominator (-inf for zeros).
HWY_INLINE float Softmax(const SequenceAttentionParams& params, const AttentionHeadParams& h, const Columns& cols,
                         int extent, float* s) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  const int n = (extent + N - 1) / N * N;
  std::fill(s + extent, s + n, -INFINITY);
  VF vmax = hn::Set(d, h.virtual_sink_logit);
  for (int j = 0; j < n; j += N) vmax = hn::Max(vmax, hn::LoadU(d, s + j));
  const float max = hn::GetLane(hn::MaxOfLanes(d, vmax));
  if (max == -INFINITY) {
    std::fill(s, s + n, 0.0f);
    return -INFINITY;
  }
  double sum = 0.0;
  for (int j = 0; j < n; j += N) {
    const VF e = ExpNonPositive(d, hn::Sub(hn::LoadU(d, s + j), hn::Set(d, max)));
    hn::StoreU(e, d, s + j);
    sum += FoldSum(d, e);
  }
  if (h.virtual_sink_logit != -INFINITY) sum += std::exp(h.virtual_sink_logit - max);
  const VF inv = hn::Set(d, static_cast<float>(1.0 / sum));
  const float lse = max + static_cast<float>(std::log(sum));
  if (!Reweights(h)) {
    for (int j = 0; j < n; j += N) hn::StoreU(RoundToFp16(d, hn::Mul(hn::LoadU(d, s + j), inv)), d, s + j);
    return lse;
  }
  for (int j = 0; j < n; j += N) hn::StoreU(hn::Mul(hn::LoadU(d, s + j), inv), d, s + j);
  // ACT: the set's few keys are looked up by position and taken out of the
  // row, whose remaining sum is the other keys' mass (summed, not taken as
  // 1 - set, which would cancel when the set holds nearly all); both scales
  // then apply a vector at a time.
  thread_local std::vector<std::pair<int32_t, float>> in_set;  // (column, probability)
  in_set.clear();
  double mass_set = 0.0, mass_rest = 0.0;
  for (int32_t i = 0; i < h.reweight_keys_size; ++i) {
    const int32_t c = cols.Find(params.reweight_keys[h.reweight_keys_begin + i]);
    if (c < 0 || c >= extent) continue;
    in_set.emplace_back(c, s[c]);
    mass_set += s[c];
    s[c] = 0.0f;
  }
  for (int j = 0; j < n; j += N) mass_rest += FoldSum(d, hn::LoadU(d, s + j));
  const ReweightScales w =
      ComputeReweightScales(h.reweight_beta, static_cast<float>(mass_set), static_cast<float>(mass_rest));
  const VF rest = hn::Set(d, w.rest);
  for (int j = 0; j < n; j += N) hn::StoreU(RoundToFp16(d, hn::Mul(hn::LoadU(d, s + j), rest)), d, s + j);
  for (const auto& [c, p] : in_set) s[c] = Fp16ToFloat(FloatToFp16(p * w.in_set));
  return lse;
}

// With column_mass, adds each row's probabilities into it instead of
// computing outputs (see AttentionColumnMassKvHead).
void PagedAttentionKvHeadImpl(const AttentionQueries& queries, const PagedKv& kv,
                              const SequenceAttentionParams& params, int kv_head, float* out, double* column_mass) {
  if (queries.n_queries <= 0) return;
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  const int hd = kv.head_dim;
  const int hdp = (hd + N - 1) / N * N;
  const int G = queries.n_q_heads / kv.n_kv_heads;
  const int rows = queries.n_queries * G;
  const AttentionHeadParams* heads = params.heads + kv_head * G;

  int32_t min_pos = queries.positions[0], max_pos = queries.positions[0];
  for (int i = 0; i < queries.n_queries; ++i) {
    min_pos = std::min(min_pos, queries.positions[i]);
    max_pos = std::max(max_pos, queries.positions[i]);
  }
  // The group reads the keys some head of it sees: the sequence's set or,
  // when every head of the group has its own window (DuoAttention's
  // streaming heads), the widest of those; narrower heads mask the rest.
  SequenceAttentionParams read = params;
  if (read.window_tokens == 0) {
    bool all_windowed = true;
    for (int g = 0; g < G; ++g) {
      all_windowed &= heads[g].window_tokens > 0;
      read.sink_tokens = std::max(read.sink_tokens, heads[g].sink_tokens);
      read.window_tokens = std::max(read.window_tokens, heads[g].window_tokens);
    }
    if (!all_windowed) read = params;
  }
  thread_local Scratch sc;
  if (queries.key_ranges != nullptr) {
    sc.ranges.assign(queries.key_ranges, queries.key_ranges + queries.num_key_ranges);
  } else {
    KeysToRead(read, min_pos, max_pos, sc.ranges);
  }
  sc.first.assign(1, 0);
  for (const KeyRange& r : sc.ranges) sc.first.push_back(sc.first.back() + r.end - r.begin);
  const Columns cols{sc.ranges, sc.first};
  const int64_t stride = (cols.Count() + N - 1) / N * N;
  // Value accumulators: one per key position mod L (the matmul's lanes).
  const bool vec_dot = kVecDotOrder && queries.n_queries == 1;
  const int L = vec_dot ? 4 * N : N;

  Grow(sc.q, static_cast<size_t>(rows) * hdp);
  Grow(sc.logits, static_cast<size_t>(rows) * stride);
  Grow(sc.block, static_cast<size_t>(kBlock) * hdp);
  Grow(sc.outside, kBlock);
  sc.acc.assign(static_cast<size_t>(rows) * L * hdp, 0.0f);

  bool any_span_bias = false;
  for (int g = 0; g < G; ++g) any_span_bias |= heads[g].outside_span_bias != 0.0f;
  // Streaming positions=CACHE: the sink keys' logits take the queries rotated
  // at their cache slot (CacheSlot); every other key the queries as given.
  const bool sink_queries = queries.sink_q != nullptr && params.sink_tokens > 0;
  auto load_queries = [&](const float* q, std::vector<float>& rows_out) {
    for (int i = 0; i < queries.n_queries; ++i) {
      for (int g = 0; g < G; ++g) {
        const float* src = q + (static_cast<int64_t>(i) * queries.n_q_heads + kv_head * G + g) * hd;
        float* dst = &rows_out[static_cast<size_t>(i * G + g) * hdp];
        std::copy(src, src + hd, dst);
        std::fill(dst + hd, dst + hdp, 0.0f);
        for (int c = 0; c < hdp; c += N) hn::StoreU(RoundToFp16(d, hn::LoadU(d, dst + c)), d, dst + c);
      }
    }
  };
  load_queries(queries.q, sc.q);
  if (sink_queries) {
    Grow(sc.sink_q, static_cast<size_t>(rows) * hdp);
    load_queries(queries.sink_q, sc.sink_q);
  }

  // Calls body(b0, nb, col, n, band_lo, band_hi, i) for each block of keys to
  // read and each query that sees some of it: keys [b0, b0 + n) are causal
  // for the query and [band_lo, band_hi) of them (block offsets) evicted.
  auto dots = [&](const float* qr, const float* keys, int n, float scale, float* s) {
    if (vec_dot) {
      VecDots(qr, keys, n, hd, hdp, scale, s);
    } else {
      Dots(qr, keys, n, hdp, scale, s);
    }
  };

  auto for_blocks = [&](const fp16_t* base, auto&& body) {
    int32_t col = 0;
    for (const KeyRange& range : cols.ranges) {
      for (int32_t b0 = range.begin; b0 < range.end; b0 += kBlock) {
        const int nb = std::min(kBlock, range.end - b0);
        ConvertRows(base, kv, kv_head, b0, nb, hdp, sc.block.data());
        for (int i = 0; i < queries.n_queries; ++i) {
          const int32_t pos = queries.positions[i];
          const int n = std::min(nb, pos + 1 - b0);
          if (n <= 0) continue;
          const KeyRange band = HiddenBand(read.sink_tokens, read.window_tokens, pos, b0, n);
          body(b0, nb, col, n, band.begin, band.end, i);
        }
        col += nb;
      }
    }
  };

  // Pass 1: logits, -inf where hidden, up to each query's own position.
  int32_t outside_b0 = -1;  // the block sc.outside describes
  for_blocks(kv.keys, [&](int32_t b0, int nb, int32_t col, int n, int band_lo, int band_hi, int i) {
    if (any_span_bias && outside_b0 != b0) {
      for (int j = 0; j < nb; ++j) {
        sc.outside[j] = b0 + j < params.prompt_tokens && !InSpans(params, b0 + j) ? 1.0f : 0.0f;
      }
      outside_b0 = b0;
    }
    for (int g = 0; g < G; ++g) {
      const AttentionHeadParams& h = heads[g];
      float* s = &sc.logits[static_cast<size_t>(i * G + g) * stride + col];
      if (band_lo == 0 && band_hi >= n) {
        std::fill(s, s + n, -INFINITY);
        continue;
      }
      const float* q = &sc.q[static_cast<size_t>(i * G + g) * hdp];
      if (sink_queries && b0 < params.sink_tokens) {
        // Each logit is its own dot product: splitting the block changes no bits.
        const int ns = std::min(n, params.sink_tokens - b0);
        dots(&sc.sink_q[static_cast<size_t>(i * G + g) * hdp], sc.block.data(), ns, h.logit_scale, s);
        dots(q, sc.block.data() + static_cast<int64_t>(ns) * hdp, n - ns, h.logit_scale, s + ns);
      } else {
        dots(q, sc.block.data(), n, h.logit_scale, s);
      }
      if (b0 == 0) s[0] += h.first_token_bias;
      if (h.outside_span_bias != 0.0f) {
        for (int j = 0; j < n; ++j) {
          if (sc.outside[j] != 0.0f) s[j] += h.outside_span_bias;
        }
      }
      std::fill(s + band_lo, s + band_hi, -INFINITY);
      if (h.window_tokens > 0) {
        const KeyRange own = HiddenBand(h.sink_tokens, h.window_tokens, queries.positions[i], b0, n);
        std::fill(s + own.begin, s + own.end, -INFINITY);
      }
    }
  });

  for (int r = 0; r < rows; ++r) {
    const int extent = cols.Of(queries.positions[r / G]) + 1;
    const float lse = Softmax(params, heads[r % G], cols, extent, &sc.logits[static_cast<size_t>(r) * stride]);
    if (queries.lse != nullptr) queries.lse[(r / G) * queries.n_q_heads + kv_head * G + r % G] = lse;
  }
  if (column_mass != nullptr) {
    for (int r = 0; r < rows; ++r) {
      const float* p = &sc.logits[static_cast<size_t>(r) * stride];
      double* mass = column_mass + static_cast<int64_t>(r % G) * kv.num_tokens;
      const int extent = cols.Of(queries.positions[r / G]) + 1;
      cols.ForEach(extent, [&](int32_t c, int32_t t) { mass[t] += p[c]; });
    }
    return;
  }

  // Pass 2: key position t goes to accumulator t mod L (the lane of the
  // reference's matmul), each in key order; the L are then folded by halves
  // (AVX2's vec_dot: the last four as (l0+l1)+(l2+l3)).
  for_blocks(kv.values, [&](int32_t b0, int nb, int32_t col, int n, int band_lo, int band_hi, int i) {
    if (band_lo == 0 && band_hi >= n) return;
    for (int g = 0; g < G; ++g) {
      const float* p = &sc.logits[static_cast<size_t>(i * G + g) * stride + col];
      float* acc = &sc.acc[static_cast<size_t>(i * G + g) * L * hdp];
      for (int j = 0; j < std::min(n, L); ++j) {
        AccumulateValues(p, sc.block.data(), j, n, L, hdp, acc + static_cast<size_t>((b0 + j) % L) * hdp);
      }
    }
  });

  for (int r = 0; r < rows; ++r) {
    float* acc = &sc.acc[static_cast<size_t>(r) * L * hdp];
    auto add_into = [&](int l, int from) {
      float* lo = acc + static_cast<size_t>(l) * hdp;
      const float* hi = acc + static_cast<size_t>(from) * hdp;
      for (int c = 0; c < hdp; c += N) hn::StoreU(hn::Add(hn::LoadU(d, lo + c), hn::LoadU(d, hi + c)), d, lo + c);
    };
    if (vec_dot && N == 8) {
      for (int half = L / 2; half >= 4; half /= 2) {
        for (int l = 0; l < half; ++l) add_into(l, l + half);
      }
      add_into(0, 1);
      add_into(2, 3);
      add_into(0, 2);
    } else {
      for (int half = L / 2; half >= 1; half /= 2) {
        for (int l = 0; l < half; ++l) add_into(l, l + half);
      }
    }
    const int i = r / G, g = r % G;
    std::copy(acc, acc + hd, out + (static_cast<int64_t>(i) * queries.n_q_heads + kv_head * G + g) * hd);
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
  HWY_DYNAMIC_DISPATCH(PagedAttentionKvHeadImpl)(queries, kv, params, kv_head, out, nullptr);
}

void AttentionColumnMassKvHead(const AttentionQueries& queries, const PagedKv& kv,
                               const SequenceAttentionParams& params, int kv_head, double* mass) {
  HWY_DYNAMIC_DISPATCH(PagedAttentionKvHeadImpl)(queries, kv, params, kv_head, nullptr, mass);
}

namespace {

bool InKeyRanges(const AttentionQueries& queries, int32_t key) {
  if (queries.key_ranges == nullptr) return true;
  for (int32_t r = 0; r < queries.num_key_ranges; ++r) {
    if (key >= queries.key_ranges[r].begin && key < queries.key_ranges[r].end) return true;
  }
  return false;
}

}  // namespace

void PagedAttentionReference(const AttentionQueries& queries, const PagedKv& kv,
                             const SequenceAttentionParams& params, float* out) {
  const int hd = kv.head_dim;
  const int G = queries.n_q_heads / kv.n_kv_heads;
  for (int i = 0; i < queries.n_queries; ++i) {
    const int32_t pos = queries.positions[i];
    for (int h = 0; h < queries.n_q_heads; ++h) {
      const AttentionHeadParams& hp = params.heads[h];
      const int g = h / G;
      const int64_t q_offset = (static_cast<int64_t>(i) * queries.n_q_heads + h) * hd;
      const float* q = queries.q + q_offset;
      const float* sink_q = queries.sink_q != nullptr ? queries.sink_q + q_offset : q;
      // Logits of the visible keys, with the additive bias.
      std::vector<double> logit(pos + 1, -INFINITY);
      std::vector<bool> visible(pos + 1, false);
      double max = hp.virtual_sink_logit;
      for (int32_t j = 0; j <= pos; ++j) {
        if (!HeadKeyVisible(params, hp, pos, j) || !InKeyRanges(queries, j)) continue;
        const fp16_t* k = kv.Row(kv.keys, g, j);
        double dot = 0.0;
        const float* qj = j < params.sink_tokens ? sink_q : q;
        for (int c = 0; c < hd; ++c) dot += static_cast<double>(qj[c]) * Fp16ToFloat(k[c]);
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
        const fp16_t* v = kv.Row(kv.values, g, j);
        for (int c = 0; c < hd; ++c) o[c] += prob[j] * Fp16ToFloat(v[c]);
      }
      std::copy(o.begin(), o.end(), out + (static_cast<int64_t>(i) * queries.n_q_heads + h) * hd);
    }
  }
}

}  // namespace attnserve
#endif  // HWY_ONCE
