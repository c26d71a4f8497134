#include "engine/policy/head_profiler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"

namespace attnserve {

HeadProfiler::HeadProfiler(const ModelConfig& config, const HeadProfileCalibration& calibration, int num_threads)
    : config_(config),
      calibration_(calibration),
      threads_(num_threads),
      sums_(static_cast<size_t>(config.n_layers) * config.n_heads),
      queries_(config.n_layers, 0),
      restricted_queries_(config.n_layers, 0) {}

void HeadProfiler::Observe(int32_t layer, const float* q, const int32_t* positions, int32_t n_queries,
                           const PagedKv& kv) {
  const int d = config_.head_dim;
  const int n_heads = config_.n_heads;
  const int group = n_heads / config_.n_kv_heads;
  const int32_t n_keys = kv.num_tokens;
  const size_t head_elements = static_cast<size_t>(n_keys) * d;
  // The layer's keys and values as floats, [kv_head][token][d]: converted
  // once here rather than once per query head and query.
  std::vector<float> keys(config_.n_kv_heads * head_elements), values(keys.size());
  for (int g = 0; g < config_.n_kv_heads; ++g) {
    for (int32_t t = 0; t < n_keys; ++t) {
      const fp16_t* k = kv.Row(kv.keys, g, t);
      const fp16_t* v = kv.Row(kv.values, g, t);
      for (int c = 0; c < d; ++c) {
        keys[g * head_elements + t * d + c] = Fp16ToFloat(k[c]);
        values[g * head_elements + t * d + c] = Fp16ToFloat(v[c]);
      }
    }
  }
  struct QueryStats {
    double sink_mass, distance, retrieval;
  };
  std::vector<QueryStats> stats(static_cast<size_t>(n_heads) * n_queries);
  struct Scratch {
    std::vector<double> logits, out, restricted_out;
  };
  std::vector<Scratch> scratch(threads_.num_threads());
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const int32_t sink_tokens = calibration_.sink_tokens;
  const int32_t recent_tokens = calibration_.recent_tokens;
  threads_.ParallelFor(static_cast<int64_t>(stats.size()), [&](int64_t task, int thread) {
    const int h = static_cast<int>(task / n_queries);
    const int32_t i = static_cast<int32_t>(task % n_queries);
    const int32_t pos = positions[i];
    const float* qh = q + (static_cast<int64_t>(i) * n_heads + h) * d;
    const float* k = &keys[(h / group) * head_elements];
    const float* v = &values[(h / group) * head_elements];
    Scratch& s = scratch[thread];
    s.logits.resize(pos + 1);
    s.out.assign(d, 0.0);
    s.restricted_out.assign(d, 0.0);
    double max = -std::numeric_limits<double>::infinity();
    for (int32_t j = 0; j <= pos; ++j) {
      double dot = 0.0;
      for (int c = 0; c < d; ++c) dot += static_cast<double>(qh[c]) * k[j * d + c];
      s.logits[j] = dot * scale;
      max = std::max(max, s.logits[j]);
    }
    // The restricted view hides keys sink_tokens <= j <= pos - recent_tokens.
    const int32_t hidden_end = pos - recent_tokens + 1;
    double z = 0.0, restricted_z = 0.0, distance = 0.0;
    for (int32_t j = 0; j <= pos; ++j) {
      const double w = std::exp(s.logits[j] - max);
      const float* vj = v + static_cast<int64_t>(j) * d;
      z += w;
      distance += w * (pos - j);
      for (int c = 0; c < d; ++c) s.out[c] += w * vj[c];
      if (j >= sink_tokens && j < hidden_end) continue;
      restricted_z += w;
      for (int c = 0; c < d; ++c) s.restricted_out[c] += w * vj[c];
    }
    double diff2 = 0.0, norm2 = 0.0;
    for (int c = 0; c < d; ++c) {
      const double o = s.out[c] / z;
      const double delta = o - s.restricted_out[c] / restricted_z;
      diff2 += delta * delta;
      norm2 += o * o;
    }
    const double retrieval = norm2 > 0.0 ? std::sqrt(diff2 / norm2) : 0.0;
    stats[task] = {std::exp(s.logits[0] - max) / z, distance / z, hidden_end > sink_tokens ? retrieval : 0.0};
  });
  // Summed in query order, so that the profile does not depend on the threads.
  for (int h = 0; h < n_heads; ++h) {
    Sums& sums = sums_[static_cast<size_t>(layer) * n_heads + h];
    for (int32_t i = 0; i < n_queries; ++i) {
      const QueryStats& st = stats[static_cast<size_t>(h) * n_queries + i];
      sums.sink_mass += st.sink_mass;
      sums.distance += st.distance;
      sums.retrieval += st.retrieval;
    }
  }
  queries_[layer] += n_queries;
  for (int32_t i = 0; i < n_queries; ++i) restricted_queries_[layer] += positions[i] - recent_tokens + 1 > sink_tokens;
}

absl::StatusOr<HeadProfile> HeadProfiler::Finish() const {
  for (int32_t l = 0; l < config_.n_layers; ++l) {
    if (queries_[l] != queries_[0]) {
      return absl::FailedPreconditionError(
          absl::StrCat("layer ", l, " saw ", queries_[l], " queries, layer 0 saw ", queries_[0]));
    }
  }
  if (queries_[0] == 0) return absl::FailedPreconditionError("no attention was observed");
  if (restricted_queries_[0] == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no query is at a position >= sink_tokens + recent_tokens = ",
        calibration_.sink_tokens + calibration_.recent_tokens, ", so the retrieval score is undefined"));
  }
  HeadProfile p;
  p.model_name = config_.name;
  p.n_layers = config_.n_layers;
  p.n_heads = config_.n_heads;
  p.n_kv_heads = config_.n_kv_heads;
  p.head_dim = config_.head_dim;
  p.calibration = calibration_;
  p.calibration.tokens = static_cast<int32_t>(queries_[0]);
  for (int32_t l = 0; l < config_.n_layers; ++l) {
    const double n = static_cast<double>(queries_[l]);
    const double restricted = static_cast<double>(restricted_queries_[l]);
    for (int32_t h = 0; h < config_.n_heads; ++h) {
      const Sums& s = sums_[static_cast<size_t>(l) * config_.n_heads + h];
      p.heads.push_back({s.sink_mass / n, s.distance / n, s.retrieval / restricted});
    }
  }
  p.retrieval_heads = TopRetrievalHeads(p.heads, p.n_heads, calibration_.retrieval_fraction);
  return p;
}

}  // namespace attnserve
