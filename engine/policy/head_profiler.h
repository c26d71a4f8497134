// Measures a HeadProfile (head_profile.h) from a model's attention over
// calibration text: every layer's queries after RoPE and its paged keys and
// values, as CpuBackend's attention observer hands them over, in order of
// the prefill chunks.
//
// Attention is recomputed naively per head in double (DESIGN.md §4 dense
// attention: s_ij = q_i·k_j / sqrt(d), softmax over j <= i), from the cache's
// fp16 keys and values: this is an offline tool, and the statistics must not
// depend on the kernels' roundings or blocking.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"
#include "engine/policy/head_profile.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/thread_pool.h"

namespace attnserve {

class HeadProfiler {
 public:
  // `calibration` gives the text's name, sink_tokens, recent_tokens and
  // retrieval_fraction; tokens are counted as they are observed.
  HeadProfiler(const ModelConfig& config, const HeadProfileCalibration& calibration, int num_threads);

  // One layer's queries of a prefill chunk: q [n_queries][n_heads][head_dim]
  // at `positions`, against kv's keys [0, kv.num_tokens). Layers of a chunk
  // come in any order; each position must be observed once per layer.
  void Observe(int32_t layer, const float* q, const int32_t* positions, int32_t n_queries, const PagedKv& kv);

  // The means of everything observed, with the retrieval heads classed.
  // FAILED_PRECONDITION when layers saw different numbers of queries, or
  // no query was far enough in to hide a key from the restricted view.
  absl::StatusOr<HeadProfile> Finish() const;

 private:
  struct Sums {
    double sink_mass = 0.0;
    double distance = 0.0;
    double retrieval = 0.0;
  };

  const ModelConfig config_;
  const HeadProfileCalibration calibration_;
  ThreadPool threads_;
  std::vector<Sums> sums_;                   // [n_layers][n_heads]
  std::vector<int64_t> queries_;             // [n_layers]
  std::vector<int64_t> restricted_queries_;  // [n_layers]: those the restricted view hides keys from
};

}  // namespace attnserve
