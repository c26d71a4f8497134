// Head profiles (DESIGN.md §4 `profile`): per layer and query head, how a
// model's attention behaves on calibration text, and the heads it puts in
// each class. `attnserve profile` measures one (HeadProfiler); the server
// loads them from --profile-dir and policies name them (PolicySpec.profile).
//
// On disk, JSON (format "attnserve.head_profile.v1"):
//   {"format": ..., "model": {name, n_layers, n_heads, n_kv_heads, head_dim},
//    "calibration": {text, tokens, sink_tokens, recent_tokens, retrieval_fraction},
//    "heads": [{layer, head, sink_mass, mean_distance, retrieval_score}, ...]  (layer-major),
//    "retrieval_heads": [{layer, head}, ...]}
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/model_config.h"
#include "engine/policy/policy_spec.h"

namespace attnserve {

inline constexpr char kHeadProfileFormat[] = "attnserve.head_profile.v1";

// Means over the calibration text's queries i of one head's attention p_ij.
struct HeadStats {
  double sink_mass = 0.0;        // p_i0
  double mean_distance = 0.0;    // Σ_j p_ij (i - j), in tokens
  // ||o_full - o_restricted|| / ||o_full||, where o_restricted is the output
  // when the head sees only the first sink_tokens and the last recent_tokens
  // keys (DuoAttention's streaming head), over the queries that this hides
  // keys from (positions >= sink_tokens + recent_tokens).
  double retrieval_score = 0.0;
};

// How the statistics were measured.
struct HeadProfileCalibration {
  std::string text;             // the calibration text's file name
  int32_t tokens = 0;           // tokens of it profiled, each one a query
  int32_t sink_tokens = 64;     // DuoAttention's defaults
  int32_t recent_tokens = 256;
  double retrieval_fraction = 0.25;  // share of heads classed retrieval heads
};

struct HeadProfile {
  std::string model_name;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  HeadProfileCalibration calibration;
  std::vector<HeadStats> heads;              // [n_layers][n_heads]
  std::vector<HeadRefSpec> retrieval_heads;  // ordered by (layer, head)

  const HeadStats& head(int32_t layer, int32_t h) const { return heads[static_cast<size_t>(layer) * n_heads + h]; }
};

// Loaded profiles by name (the file stem); std::less<> finds by string_view.
using HeadProfiles = std::map<std::string, HeadProfile, std::less<>>;

// The round(fraction * heads) heads (at least one) with the highest
// retrieval score, ties to the lower (layer, head); ordered by (layer, head).
std::vector<HeadRefSpec> TopRetrievalHeads(const std::vector<HeadStats>& heads, int32_t n_heads, double fraction);

// Numbers are written with 6 significant digits.
std::string HeadProfileToJson(const HeadProfile& profile);

// Parses and validates everything but the model match: errors are
// INVALID_ARGUMENT "<source>: <field>: <what is wrong>", e.g.
// "profiles/a.json: heads[3].sink_mass: must be in [0, 1] (got 1.5)".
absl::StatusOr<HeadProfile> HeadProfileFromJson(absl::string_view json, absl::string_view source);

// The profile was made for a model of `config`'s shape.
absl::Status CheckProfileMatchesModel(const HeadProfile& profile, const ModelConfig& config, absl::string_view source);

absl::StatusOr<HeadProfile> ReadHeadProfile(const std::string& path, const ModelConfig& config);
absl::Status WriteHeadProfile(const HeadProfile& profile, const std::string& path);

// Every *.json file in `dir`, named by its stem; the first bad file fails
// the whole load.
absl::StatusOr<HeadProfiles> LoadHeadProfiles(const std::string& dir, const ModelConfig& config);

}  // namespace attnserve
