#include "engine/policy/head_profile.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace attnserve {
namespace {

using nlohmann::json;

// Reading fields of one file, with errors that name the file and the field.
class FieldReader {
 public:
  explicit FieldReader(absl::string_view source) : source_(source) {}

  absl::Status Error(absl::string_view field, absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", field, ": ", message));
  }

  // `obj` is an object with exactly `keys` (a typo is an error, not a default).
  absl::Status CheckObject(const json& obj, std::initializer_list<const char*> keys, absl::string_view field) const {
    if (!obj.is_object()) return Error(field, "must be an object");
    for (const char* key : keys) {
      if (!obj.contains(key)) return Error(Join(field, key), "missing");
    }
    for (const auto& [key, value] : obj.items()) {
      if (std::find_if(keys.begin(), keys.end(), [&](const char* k) { return key == k; }) == keys.end()) {
        return Error(Join(field, key), "unknown field");
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int32_t> Int(const json& obj, const char* key, absl::string_view field, int64_t min,
                              int64_t max = std::numeric_limits<int32_t>::max()) const {
    const json& v = obj.at(key);
    const std::string name = Join(field, key);
    if (!v.is_number_integer()) return Error(name, "must be an integer");
    // Unsigned JSON integers may exceed int64_t.
    const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(max)
                                                 : v.get<int64_t>() >= min && v.get<int64_t>() <= max;
    if (!in_range || v.get<int64_t>() < min) {
      return Error(name, absl::StrCat("must be in [", min, ", ", max, "] (got ", v.dump(), ")"));
    }
    return static_cast<int32_t>(v.get<int64_t>());
  }

  absl::StatusOr<double> Number(const json& obj, const char* key, absl::string_view field, double min,
                                double max = std::numeric_limits<double>::infinity()) const {
    const json& v = obj.at(key);
    const std::string name = Join(field, key);
    if (!v.is_number()) return Error(name, "must be a number");
    const double d = v.get<double>();
    if (!std::isfinite(d)) return Error(name, absl::StrCat("must be finite (got ", v.dump(), ")"));
    if (d < min || d > max) {
      const std::string upper = std::isinf(max) ? "inf)" : absl::StrCat(max, "]");
      return Error(name, absl::StrCat("must be in [", min, ", ", upper, " (got ", v.dump(), ")"));
    }
    return d;
  }

  absl::StatusOr<std::string> String(const json& obj, const char* key, absl::string_view field) const {
    const json& v = obj.at(key);
    if (!v.is_string()) return Error(Join(field, key), "must be a string");
    return v.get<std::string>();
  }

  static std::string Join(absl::string_view field, absl::string_view key) {
    return field.empty() ? std::string(key) : absl::StrCat(field, ".", key);
  }

 private:
  std::string source_;
};

absl::StatusOr<HeadRefSpec> ParseHeadRef(const FieldReader& r, const json& j, const std::string& field,
                                         const HeadProfile& p) {
  ATTN_RETURN_IF_ERROR(r.CheckObject(j, {"layer", "head"}, field));
  HeadRefSpec ref;
  ATTN_ASSIGN_OR_RETURN(ref.layer, r.Int(j, "layer", field, 0, p.n_layers - 1));
  ATTN_ASSIGN_OR_RETURN(ref.head, r.Int(j, "head", field, 0, p.n_heads - 1));
  return ref;
}

absl::Status ParseModel(const FieldReader& r, const json& m, HeadProfile& p) {
  ATTN_RETURN_IF_ERROR(r.CheckObject(m, {"name", "n_layers", "n_heads", "n_kv_heads", "head_dim"}, "model"));
  ATTN_ASSIGN_OR_RETURN(p.model_name, r.String(m, "name", "model"));
  ATTN_ASSIGN_OR_RETURN(p.n_layers, r.Int(m, "n_layers", "model", 1, 4096));
  ATTN_ASSIGN_OR_RETURN(p.n_heads, r.Int(m, "n_heads", "model", 1, 4096));
  ATTN_ASSIGN_OR_RETURN(p.n_kv_heads, r.Int(m, "n_kv_heads", "model", 1, p.n_heads));
  ATTN_ASSIGN_OR_RETURN(p.head_dim, r.Int(m, "head_dim", "model", 1));
  if (p.n_heads % p.n_kv_heads != 0) {
    return r.Error("model.n_kv_heads", absl::StrCat("must divide n_heads ", p.n_heads, " (got ", p.n_kv_heads, ")"));
  }
  return absl::OkStatus();
}

absl::Status ParseCalibration(const FieldReader& r, const json& c, HeadProfileCalibration& out) {
  constexpr const char* kField = "calibration";
  ATTN_RETURN_IF_ERROR(
      r.CheckObject(c, {"text", "tokens", "sink_tokens", "recent_tokens", "retrieval_fraction"}, kField));
  ATTN_ASSIGN_OR_RETURN(out.text, r.String(c, "text", kField));
  ATTN_ASSIGN_OR_RETURN(out.tokens, r.Int(c, "tokens", kField, 1));
  ATTN_ASSIGN_OR_RETURN(out.sink_tokens, r.Int(c, "sink_tokens", kField, 0));
  ATTN_ASSIGN_OR_RETURN(out.recent_tokens, r.Int(c, "recent_tokens", kField, 1));
  ATTN_ASSIGN_OR_RETURN(out.retrieval_fraction, r.Number(c, "retrieval_fraction", kField, 0.0, 1.0));
  if (out.retrieval_fraction == 0.0) {
    return r.Error("calibration.retrieval_fraction", "must be in (0, 1] (got 0)");
  }
  return absl::OkStatus();
}

absl::Status ParseHeads(const FieldReader& r, const json& heads, HeadProfile& p) {
  const size_t expected = static_cast<size_t>(p.n_layers) * p.n_heads;
  if (!heads.is_array() || heads.size() != expected) {
    return r.Error("heads", absl::StrCat("must be an array of n_layers * n_heads = ", expected, " heads (got ",
                                         heads.is_array() ? absl::StrCat(heads.size()) : "no array", ")"));
  }
  for (size_t i = 0; i < expected; ++i) {
    const std::string field = absl::StrCat("heads[", i, "]");
    const json& h = heads[i];
    ATTN_RETURN_IF_ERROR(
        r.CheckObject(h, {"layer", "head", "sink_mass", "mean_distance", "retrieval_score"}, field));
    ATTN_ASSIGN_OR_RETURN(const int32_t layer, r.Int(h, "layer", field, 0, p.n_layers - 1));
    ATTN_ASSIGN_OR_RETURN(const int32_t head, r.Int(h, "head", field, 0, p.n_heads - 1));
    // Listing them in order makes gaps and duplicates impossible.
    const int32_t want_layer = static_cast<int32_t>(i / p.n_heads), want_head = static_cast<int32_t>(i % p.n_heads);
    if (layer != want_layer || head != want_head) {
      return r.Error(field, absl::StrCat("expected layer ", want_layer, " head ", want_head,
                                         " (heads are listed layer-major), got layer ", layer, " head ", head));
    }
    HeadStats s;
    ATTN_ASSIGN_OR_RETURN(s.sink_mass, r.Number(h, "sink_mass", field, 0.0, 1.0));
    ATTN_ASSIGN_OR_RETURN(s.mean_distance, r.Number(h, "mean_distance", field, 0.0));
    ATTN_ASSIGN_OR_RETURN(s.retrieval_score, r.Number(h, "retrieval_score", field, 0.0));
    p.heads.push_back(s);
  }
  return absl::OkStatus();
}

absl::Status ParseRetrievalHeads(const FieldReader& r, const json& list, HeadProfile& p) {
  if (!list.is_array()) return r.Error("retrieval_heads", "must be an array");
  std::set<std::pair<uint32_t, uint32_t>> seen;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string field = absl::StrCat("retrieval_heads[", i, "]");
    ATTN_ASSIGN_OR_RETURN(const HeadRefSpec ref, ParseHeadRef(r, list[i], field, p));
    if (!seen.insert({ref.layer, ref.head}).second) {
      return r.Error(field, absl::StrCat("layer ", ref.layer, " head ", ref.head, " is listed twice"));
    }
    p.retrieval_heads.push_back(ref);
  }
  return absl::OkStatus();
}

// Shortest text that reads back as x to 6 significant digits.
double Rounded(double x) { return std::stod(absl::StrFormat("%.6g", x)); }

}  // namespace

std::vector<HeadRefSpec> TopRetrievalHeads(const std::vector<HeadStats>& heads, int32_t n_heads, double fraction) {
  std::vector<size_t> order(heads.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return heads[a].retrieval_score > heads[b].retrieval_score; });
  const size_t count = std::clamp<size_t>(static_cast<size_t>(std::llround(fraction * heads.size())), 1, heads.size());
  order.resize(count);
  std::sort(order.begin(), order.end());
  std::vector<HeadRefSpec> out;
  for (size_t i : order) out.push_back({static_cast<uint32_t>(i / n_heads), static_cast<uint32_t>(i % n_heads)});
  return out;
}

std::string HeadProfileToJson(const HeadProfile& p) {
  const HeadProfileCalibration& c = p.calibration;
  const nlohmann::ordered_json model = {{"name", p.model_name},
                                        {"n_layers", p.n_layers},
                                        {"n_heads", p.n_heads},
                                        {"n_kv_heads", p.n_kv_heads},
                                        {"head_dim", p.head_dim}};
  const nlohmann::ordered_json calibration = {{"text", c.text},
                                              {"tokens", c.tokens},
                                              {"sink_tokens", c.sink_tokens},
                                              {"recent_tokens", c.recent_tokens},
                                              {"retrieval_fraction", c.retrieval_fraction}};
  // One head per line: readable, and diffs of a re-profiled model stay small.
  std::string out = absl::StrCat("{\n  \"format\": \"", kHeadProfileFormat, "\",\n  \"model\": ", model.dump(),
                                 ",\n  \"calibration\": ", calibration.dump(), ",\n  \"heads\": [\n");
  for (size_t i = 0; i < p.heads.size(); ++i) {
    const HeadStats& s = p.heads[i];
    const nlohmann::ordered_json h = {{"layer", i / p.n_heads}, {"head", i % p.n_heads},
                                      {"sink_mass", Rounded(s.sink_mass)}, {"mean_distance", Rounded(s.mean_distance)},
                                      {"retrieval_score", Rounded(s.retrieval_score)}};
    absl::StrAppend(&out, "    ", h.dump(), i + 1 < p.heads.size() ? ",\n" : "\n");
  }
  absl::StrAppend(&out, "  ],\n  \"retrieval_heads\": [\n");
  for (size_t i = 0; i < p.retrieval_heads.size(); ++i) {
    const HeadRefSpec& r = p.retrieval_heads[i];
    absl::StrAppend(&out, "    {\"layer\":", r.layer, ",\"head\":", r.head, "}",
                    i + 1 < p.retrieval_heads.size() ? ",\n" : "\n");
  }
  absl::StrAppend(&out, "  ]\n}\n");
  return out;
}

absl::StatusOr<HeadProfile> HeadProfileFromJson(absl::string_view text, absl::string_view source) {
  const FieldReader r(source);
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {  // parse_error, or out_of_range for numbers past double
    return absl::InvalidArgumentError(absl::StrCat(source, ": not JSON: ", e.what()));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": must be a JSON object"));
  ATTN_RETURN_IF_ERROR(r.CheckObject(j, {"format", "model", "calibration", "heads", "retrieval_heads"}, ""));
  ATTN_ASSIGN_OR_RETURN(const std::string format, r.String(j, "format", ""));
  if (format != kHeadProfileFormat) {
    return r.Error("format", absl::StrCat("expected \"", kHeadProfileFormat, "\" (got \"", format, "\")"));
  }
  HeadProfile p;
  ATTN_RETURN_IF_ERROR(ParseModel(r, j.at("model"), p));
  ATTN_RETURN_IF_ERROR(ParseCalibration(r, j.at("calibration"), p.calibration));
  ATTN_RETURN_IF_ERROR(ParseHeads(r, j.at("heads"), p));
  ATTN_RETURN_IF_ERROR(ParseRetrievalHeads(r, j.at("retrieval_heads"), p));
  return p;
}

absl::Status CheckProfileMatchesModel(const HeadProfile& p, const ModelConfig& c, absl::string_view source) {
  const std::pair<const char*, std::pair<int32_t, int32_t>> fields[] = {
      {"n_layers", {p.n_layers, c.n_layers}},
      {"n_heads", {p.n_heads, c.n_heads}},
      {"n_kv_heads", {p.n_kv_heads, c.n_kv_heads}},
      {"head_dim", {p.head_dim, c.head_dim}},
  };
  for (const auto& [name, values] : fields) {
    if (values.first == values.second) continue;
    return absl::InvalidArgumentError(absl::StrCat(source, ": model.", name, ": the profile was made for ",
                                                   values.first, ", the served model has ", values.second));
  }
  return absl::OkStatus();
}

absl::StatusOr<HeadProfile> ReadHeadProfile(const std::string& path, const ModelConfig& config) {
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  ATTN_ASSIGN_OR_RETURN(HeadProfile profile, HeadProfileFromJson(text.str(), path));
  ATTN_RETURN_IF_ERROR(CheckProfileMatchesModel(profile, config, path));
  return profile;
}

absl::Status WriteHeadProfile(const HeadProfile& profile, const std::string& path) {
  std::ofstream out(path, std::ios::binary);
  out << HeadProfileToJson(profile);
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  return absl::OkStatus();
}

absl::StatusOr<HeadProfiles> LoadHeadProfiles(const std::string& dir, const ModelConfig& config) {
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.path().extension() == ".json" && entry.is_regular_file()) files.push_back(entry.path());
  }
  if (error) return absl::UnavailableError(absl::StrCat(dir, ": cannot list: ", error.message()));
  std::sort(files.begin(), files.end());
  HeadProfiles profiles;
  for (const std::filesystem::path& file : files) {
    ATTN_ASSIGN_OR_RETURN(HeadProfile profile, ReadHeadProfile(file.string(), config));
    profiles.emplace(file.stem().string(), std::move(profile));
  }
  return profiles;
}

}  // namespace attnserve
