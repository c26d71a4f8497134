#include "engine/sampling/sampler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>

namespace attnserve {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Tokens whose weight is below e^-50 of the top token's are left out of the
// draw: even the whole vocabulary of them (49152 * e^-50 < 1e-17) holds less
// mass than the 2^-53 resolution of the uniform draw.
constexpr float kMinLogWeight = kPickMinX;  // the device picks drop the same tail

// top_k / top_p find their cut with a histogram of the scaled logits
// x = (logit - max) / temperature in [-50, 0], buckets 0.05 wide (bucket 0
// holds the top token), then sort only the bucket the cut falls in.
constexpr int kBucketsPerUnit = 20;
constexpr int kBuckets = static_cast<int>(-kMinLogWeight) * kBucketsPerUnit + 1;

// Whole-row loops are compiled for AVX2 and for the baseline, chosen at load
// time. No FMA: both versions give the same bits, so tokens do not depend on
// the machine. (-fno-trapping-math lets GCC vectorise the selects.)
#define ATTN_ROW_LOOP __attribute__((target_clones("avx2", "default")))

// exp(x) for x <= 0 with the polynomial of Cephes' expf (relative error
// < 1e-7), branch-free so that row loops vectorise; x below -87, -inf and NaN
// give ~1.6e-38.
inline float Exp(float x) {
  x = x > -87.0f ? x : -87.0f;
  const float n = (x * 1.44269504088896341f + 0x1.8p23f) - 0x1.8p23f;  // round(x / ln 2)
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;          // x - n ln 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return (p * r * r + r + 1.0f) * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

// A token and its logit; Before is the order of the sorted row: larger logit
// first, lower id on a tie.
struct Scored {
  float logit;
  int32_t token;
};

bool Before(const Scored& a, const Scored& b) { return PickBefore(a.logit, a.token, b.logit, b.token); }


// Histogram bucket of a scaled logit; NaN and anything below -50 land in the last.
inline int32_t BucketOf(float x) {
  return static_cast<int32_t>((x > kMinLogWeight ? x : kMinLogWeight) * -static_cast<float>(kBucketsPerUnit));
}

// Largest value, NaN skipped; -inf for an empty or all-NaN row. (Row
// reductions use eight lanes so that they vectorise without reassociation.)
ATTN_ROW_LOOP float MaxOf(std::span<const float> row) {
  float lane[8] = {-kInf, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf};
  size_t i = 0;
  for (; i + 8 <= row.size(); i += 8) {
    for (int j = 0; j < 8; ++j) lane[j] = row[i + j] > lane[j] ? row[i + j] : lane[j];
  }
  for (; i < row.size(); ++i) lane[0] = row[i] > lane[0] ? row[i] : lane[0];
  return *std::max_element(lane, lane + 8);
}

// sum(exp(row - max)), NaN entries contributing ~1e-38.
ATTN_ROW_LOOP double SumExp(std::span<const float> row, float max) {
  float lane[8] = {};
  size_t i = 0;
  for (; i + 8 <= row.size(); i += 8) {
    for (int j = 0; j < 8; ++j) lane[j] += Exp(row[i + j] - max);
  }
  for (; i < row.size(); ++i) lane[0] += Exp(row[i] - max);
  double sum = 0.0;
  for (float l : lane) sum += l;
  return sum;
}

// w = exp(x), 0 below kMinLogWeight and for NaN; and x's histogram bucket.
ATTN_ROW_LOOP void WeightsAndBuckets(std::span<const float> logits, float max, float inv_t, std::span<float> w,
                                     std::span<int16_t> bucket) {
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = ScaledLogit(logits[i], max, inv_t);
    w[i] = x >= kMinLogWeight ? Exp(x) : 0.0f;
    bucket[i] = static_cast<int16_t>(BucketOf(x));
  }
}

ATTN_ROW_LOOP void ZeroBucketsAfter(int16_t last, std::span<const int16_t> bucket, std::span<float> w) {
  for (size_t i = 0; i < w.size(); ++i) w[i] = bucket[i] > last ? 0.0f : w[i];
}

ATTN_ROW_LOOP void FloorAt(float floor, std::span<float> w) {
  for (float& x : w) x = x >= floor ? x : 0.0f;
}

// Sums of consecutive blocks of kDrawBlock weights, so that the draw walks
// blocks, then one block's weights.
constexpr size_t kDrawBlock = 64;
ATTN_ROW_LOOP void BlockSums(std::span<const float> w, std::span<float> sums) {
  for (size_t b = 0; b < sums.size(); ++b) {
    const std::span<const float> block = w.subspan(b * kDrawBlock, std::min(kDrawBlock, w.size() - b * kDrawBlock));
    float lane[8] = {};
    size_t i = 0;
    for (; i + 8 <= block.size(); i += 8) {
      for (int j = 0; j < 8; ++j) lane[j] += block[i + j];
    }
    for (; i < block.size(); ++i) lane[0] += block[i];
    sums[b] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
}

// Scratch shared by the sequences sampled on a thread (the engine samples
// on one): vocab-sized rows per sequence would cost 300 KB each.
struct Scratch {
  std::vector<float> weights;
  std::vector<int16_t> buckets;  // histogram bucket of each token
  std::vector<float> block_sums;
  std::vector<Scored> bucket;    // the tokens of the bucket a cut falls in
  std::vector<Scored> top;       // the most likely tokens, for top_logprobs
  std::array<int32_t, kBuckets> count;
  std::array<double, kBuckets> mass;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Zeroes the weights that top_k, then top_p (over the top_k survivors' mass,
// as vLLM renormalises first), drop: always a tail of the sorted order.
void Truncate(std::span<const float> logits, int32_t top_k, float top_p, std::span<float> w, Scratch& s) {
  const std::span<const int16_t> buckets(s.buckets);
  s.count.fill(0);
  s.mass.fill(0.0);
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] == 0.0f) continue;
    ++s.count[buckets[i]];
    s.mass[buckets[i]] += w[i];
  }
  // Sorts the drawable tokens of bucket b into s.bucket, most likely first.
  int32_t sorted = -1;
  const auto sort_bucket = [&](int32_t b) {
    s.bucket.clear();
    for (size_t i = 0; i < w.size(); ++i) {
      if (buckets[i] == b && w[i] > 0.0f) s.bucket.push_back({logits[i], static_cast<int32_t>(i)});
    }
    std::sort(s.bucket.begin(), s.bucket.end(), Before);
    sorted = b;
  };
  // Keeps the first `keep` of the sorted bucket, drops the rest.
  const auto cut_bucket = [&](size_t keep) {
    for (size_t j = keep; j < s.bucket.size(); ++j) w[s.bucket[j].token] = 0.0f;
    s.bucket.resize(std::min(keep, s.bucket.size()));
    double mass = 0.0;
    for (const Scored& t : s.bucket) mass += w[t.token];
    s.mass[sorted] = mass;
  };
  int32_t last = kBuckets - 1;  // the buckets after `last` are dropped
  if (top_k > 0) {
    int64_t before = 0;
    int32_t b = 0;
    while (b < kBuckets && before + s.count[b] < top_k) before += s.count[b++];
    if (b < kBuckets) {  // else there are no more than top_k drawable tokens
      sort_bucket(b);
      cut_bucket(static_cast<size_t>(top_k - before));
      last = b;
    }
  }
  if (top_p < 1.0f) {
    double total = 0.0;
    for (int32_t b = 0; b <= last; ++b) total += s.mass[b];
    const double target = top_p * total;
    double before = 0.0;
    int32_t b = 0;
    while (b < last && before + s.mass[b] < target) before += s.mass[b++];
    if (b != sorted) sort_bucket(b);
    size_t keep = 0;
    while (keep < s.bucket.size() && before < target) before += w[s.bucket[keep++].token];
    cut_bucket(std::max<size_t>(keep, 1));
    last = b;
  }
  ZeroBucketsAfter(static_cast<int16_t>(last), buckets, w);
}

// The token at `u` (in [0, 1)) of the cumulative weights, blocks first.
// -1 when every weight is 0.
int32_t DrawFrom(std::span<const float> w, double u, Scratch& s) {
  s.block_sums.resize((w.size() + kDrawBlock - 1) / kDrawBlock);
  BlockSums(w, s.block_sums);
  double total = 0.0;
  for (float b : s.block_sums) total += b;
  if (!(total > 0.0)) return -1;
  const double target = u * total;
  double mass = 0.0;
  size_t b = 0;
  while (b + 1 < s.block_sums.size() && mass + s.block_sums[b] <= target) mass += s.block_sums[b++];
  const size_t begin = b * kDrawBlock, end = std::min(begin + kDrawBlock, w.size());
  int32_t last_drawable = -1;
  for (size_t i = begin; i < end; ++i) {
    if (w[i] == 0.0f) continue;
    mass += w[i];
    last_drawable = static_cast<int32_t>(i);
    if (mass > target) break;
  }
  return last_drawable;  // rounding may leave the target just out of reach
}

// The n most likely tokens into `top`, in order; -inf and NaN left out.
// Blocks whose largest logit cannot enter the full list are skipped whole.
void FindTop(std::span<const float> logits, size_t n, std::vector<Scored>& top) {
  constexpr size_t kBlock = 32;
  top.clear();
  for (size_t begin = 0; begin < logits.size(); begin += kBlock) {
    const std::span<const float> block = logits.subspan(begin, std::min(kBlock, logits.size() - begin));
    if (top.size() == n && MaxOf(block) < top.back().logit) continue;
    for (size_t i = 0; i < block.size(); ++i) {
      const Scored c{block[i], static_cast<int32_t>(begin + i)};
      if (!(c.logit > -kInf)) continue;
      if (top.size() == n) {
        if (!Before(c, top.back())) continue;
        top.pop_back();
      }
      top.insert(std::upper_bound(top.begin(), top.end(), c, Before), c);
    }
  }
}

uint64_t SeedFor(const SamplingOptions& options) {
  if (options.seed.has_value()) return *options.seed;
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

}  // namespace

int32_t ArgMax(std::span<const float> logits) {
  const float max = MaxOf(logits);
  const auto it = std::find(logits.begin(), logits.end(), max);
  return it == logits.end() ? 0 : static_cast<int32_t>(it - logits.begin());
}

void LogSoftmax(std::span<const float> logits, std::span<float> out) {
  // (l - max) - log(sum) keeps the precision that l - LogSumExp loses at large l.
  const float max = MaxOf(logits);
  const float log_sum = std::isinf(max) ? 0.0f : static_cast<float>(std::log(SumExp(logits, max)));
  for (size_t i = 0; i < logits.size(); ++i) out[i] = (logits[i] - max) - log_sum;
}

Sampler::Sampler(const SamplingOptions& options)
    : temperature_(options.temperature),
      top_k_(options.top_k),
      top_p_(options.top_p),
      min_p_(options.min_p),
      logprobs_(options.logprobs),
      top_logprobs_(options.logprobs ? options.top_logprobs : 0),
      rng_(SeedFor(options)) {}

void TokenLogprobs(std::span<const float> logits, int32_t token, int32_t top_n, SampledToken& out) {
  const float max = MaxOf(logits);
  const float log_sum = static_cast<float>(std::log(SumExp(logits, max)));
  out.logprob = (logits[token] - max) - log_sum;
  out.top.clear();
  if (top_n <= 0) return;
  std::vector<Scored>& top = ThreadScratch().top;
  FindTop(logits, static_cast<size_t>(top_n), top);
  out.top.reserve(top.size());
  for (const Scored& s : top) out.top.push_back({s.token, (s.logit - max) - log_sum});
}

SampledToken Sampler::Sample(std::span<const float> logits) {
  SampledToken out;
  out.token = temperature_ > 0.0f ? Draw(logits) : ArgMax(logits);
  if (logprobs_) TokenLogprobs(logits, out.token, top_logprobs_, out);
  return out;
}

TokenPick Sampler::NextPick() {
  TokenPick p;
  p.temperature = temperature_;
  p.top_k = top_k_;
  p.top_p = top_p_;
  p.min_p = min_p_;
  p.logprobs = logprobs_;
  p.top_logprobs = top_logprobs_;
  if (!greedy()) p.uniform = Uniform();
  return p;
}

double Sampler::Uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::Draw(std::span<const float> logits) {
  const double u = Uniform();  // drawn first: one draw per token, whatever the row holds
  const float max = MaxOf(logits);
  if (!std::isfinite(max)) return ArgMax(logits);  // nothing finite, or a +inf that wins
  const float inv_t = 1.0f / temperature_;
  Scratch& scratch = ThreadScratch();
  scratch.weights.resize(logits.size());
  scratch.buckets.resize(logits.size());
  const std::span<float> w(scratch.weights);
  WeightsAndBuckets(logits, max, inv_t, w, scratch.buckets);
  if (top_k_ > 0 || top_p_ < 1.0f) Truncate(logits, top_k_, top_p_, w, scratch);
  // The top token has weight 1, so min_p compares weights directly; what it
  // drops is a tail of the sorted order, as with top_k and top_p.
  if (min_p_ > 0.0f) FloorAt(min_p_, w);
  const int32_t token = DrawFrom(w, u, scratch);
  return token >= 0 ? token : ArgMax(logits);  // nothing drawable, e.g. at a denormal temperature
}

}  // namespace attnserve
