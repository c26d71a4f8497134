// Head profiles: JSON round trip, every validation error naming the file and
// the field, loading a directory, the retrieval class, and the profiler's
// statistics on attention whose values are known in closed form.
#include "engine/policy/head_profile.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/policy/head_profiler.h"
#include "gtest/gtest.h"
#include "kernels/common/half.h"
#include "nlohmann/json.hpp"

namespace attnserve {
namespace {

// 2 layers x 3 heads, values exact in 6 digits so they survive the file.
HeadProfile Small() {
  HeadProfile p;
  p.model_name = "tiny";
  p.n_layers = 2;
  p.n_heads = 3;
  p.n_kv_heads = 1;
  p.head_dim = 4;
  p.calibration = {"GPL-3", 100, 4, 16, 0.5};
  for (int i = 0; i < 6; ++i) p.heads.push_back({0.125 * i / 2, 10.5 + i, 0.25 * i});
  p.retrieval_heads = TopRetrievalHeads(p.heads, p.n_heads, 0.5);
  return p;
}

ModelConfig ShapeOf(const HeadProfile& p) {
  ModelConfig c;
  c.n_layers = p.n_layers;
  c.n_heads = p.n_heads;
  c.n_kv_heads = p.n_kv_heads;
  c.head_dim = p.head_dim;
  return c;
}

std::filesystem::path TempDir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

void WriteFile(const std::filesystem::path& path, const std::string& text) { std::ofstream(path) << text; }

TEST(HeadProfileTest, JsonRoundTrip) {
  const HeadProfile p = Small();
  const std::string json = HeadProfileToJson(p);
  const absl::StatusOr<HeadProfile> back = HeadProfileFromJson(json, "small.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->model_name, "tiny");
  EXPECT_EQ(back->n_layers, 2);
  EXPECT_EQ(back->n_heads, 3);
  EXPECT_EQ(back->n_kv_heads, 1);
  EXPECT_EQ(back->head_dim, 4);
  EXPECT_EQ(back->calibration.text, "GPL-3");
  EXPECT_EQ(back->calibration.tokens, 100);
  EXPECT_EQ(back->calibration.sink_tokens, 4);
  EXPECT_EQ(back->calibration.recent_tokens, 16);
  EXPECT_EQ(back->calibration.retrieval_fraction, 0.5);
  ASSERT_EQ(back->heads.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(back->heads[i].sink_mass, p.heads[i].sink_mass) << i;
    EXPECT_EQ(back->heads[i].mean_distance, p.heads[i].mean_distance) << i;
    EXPECT_EQ(back->heads[i].retrieval_score, p.heads[i].retrieval_score) << i;
  }
  ASSERT_EQ(back->retrieval_heads.size(), 3u);
  EXPECT_EQ(back->head(1, 2).retrieval_score, 1.25);
  EXPECT_EQ(HeadProfileToJson(*back), json);
}

TEST(HeadProfileTest, WritesSixSignificantDigits) {
  HeadProfile p = Small();
  p.heads[0].mean_distance = 123.456789012;
  p.heads[0].sink_mass = 1.0 / 3.0;
  const absl::StatusOr<HeadProfile> back = HeadProfileFromJson(HeadProfileToJson(p), "p.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->heads[0].mean_distance, 123.457);
  EXPECT_EQ(back->heads[0].sink_mass, 0.333333);
}

TEST(HeadProfileTest, TopRetrievalHeadsTakesTheHighestScoresInHeadOrder) {
  std::vector<HeadStats> heads(6);
  const double scores[] = {0.1, 0.9, 0.3, 0.9, 0.0, 0.5};
  for (int i = 0; i < 6; ++i) heads[i].retrieval_score = scores[i];
  const auto refs = [](const std::vector<HeadRefSpec>& v) {
    std::vector<std::pair<uint32_t, uint32_t>> out;
    for (const HeadRefSpec& r : v) out.emplace_back(r.layer, r.head);
    return out;
  };
  using Refs = std::vector<std::pair<uint32_t, uint32_t>>;
  EXPECT_EQ(refs(TopRetrievalHeads(heads, 3, 0.5)), (Refs{{0, 1}, {1, 0}, {1, 2}}));
  // A tie at the cut goes to the lower head.
  EXPECT_EQ(refs(TopRetrievalHeads(heads, 3, 1.0 / 6)), (Refs{{0, 1}}));
  // At least one head, at most all.
  EXPECT_EQ(refs(TopRetrievalHeads(heads, 3, 0.01)).size(), 1u);
  EXPECT_EQ(refs(TopRetrievalHeads(heads, 3, 1.0)).size(), 6u);
}

TEST(HeadProfileTest, InvalidFilesAreRejectedNamingTheFileAndField) {
  using Edit = std::function<void(nlohmann::json&)>;
  const std::vector<std::pair<std::string, Edit>> cases = {
      {"p.json: format: expected \"attnserve.head_profile.v1\" (got \"v0\")", [](auto& j) { j["format"] = "v0"; }},
      {"p.json: model.n_layers: missing", [](auto& j) { j["model"].erase("n_layers"); }},
      {"p.json: retreival_heads: unknown field", [](auto& j) { j["retreival_heads"] = j["retrieval_heads"]; }},
      {"p.json: model.n_heads: must be an integer", [](auto& j) { j["model"]["n_heads"] = 3.5; }},
      {"p.json: model.n_kv_heads: must be in [1, 3] (got 4)", [](auto& j) { j["model"]["n_kv_heads"] = 4; }},
      {"p.json: model.n_kv_heads: must divide n_heads 3 (got 2)", [](auto& j) { j["model"]["n_kv_heads"] = 2; }},
      {"p.json: model.name: must be a string", [](auto& j) { j["model"]["name"] = 1; }},
      {"p.json: calibration.tokens: must be in [1, 2147483647] (got 0)",
       [](auto& j) { j["calibration"]["tokens"] = 0; }},
      {"p.json: calibration.tokens: must be in [1, 2147483647] (got 18446744073709551615)",
       [](auto& j) { j["calibration"]["tokens"] = UINT64_MAX; }},
      {"p.json: calibration.retrieval_fraction: must be in (0, 1] (got 0)",
       [](auto& j) { j["calibration"]["retrieval_fraction"] = 0; }},
      {"p.json: heads: must be an array of n_layers * n_heads = 6 heads (got 5)",
       [](auto& j) { j["heads"].erase(5); }},
      {"p.json: heads[1]: expected layer 0 head 1 (heads are listed layer-major), got layer 0 head 2",
       [](auto& j) { std::swap(j["heads"][1], j["heads"][2]); }},
      {"p.json: heads[3].layer: must be in [0, 1] (got 2)", [](auto& j) { j["heads"][3]["layer"] = 2; }},
      {"p.json: heads[2].sink_mass: must be in [0, 1] (got 1.5)", [](auto& j) { j["heads"][2]["sink_mass"] = 1.5; }},
      {"p.json: heads[2].sink_mass: must be a number", [](auto& j) { j["heads"][2]["sink_mass"] = "NaN"; }},
      {"p.json: heads[0].mean_distance: must be in [0, inf) (got -1.0)",
       [](auto& j) { j["heads"][0]["mean_distance"] = -1.0; }},
      {"p.json: heads[4].retrieval_score: missing", [](auto& j) { j["heads"][4].erase("retrieval_score"); }},
      {"p.json: retrieval_heads[0].head: must be in [0, 2] (got 3)",
       [](auto& j) { j["retrieval_heads"][0]["head"] = 3; }},
      {"p.json: retrieval_heads[1]: layer 1 head 0 is listed twice",
       [](auto& j) { j["retrieval_heads"][1] = j["retrieval_heads"][0]; }},
      {"p.json: retrieval_heads: must be an array", [](auto& j) { j["retrieval_heads"] = nlohmann::json::object(); }},
  };
  for (const auto& [message, edit] : cases) {
    nlohmann::json j = nlohmann::json::parse(HeadProfileToJson(Small()));
    edit(j);
    const absl::Status s = HeadProfileFromJson(j.dump(), "p.json").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_EQ(s.message(), message);
  }
  for (const char* text : {"{\"format\": ", "{\"format\": 1e999}"}) {
    const absl::Status not_json = HeadProfileFromJson(text, "p.json").status();
    EXPECT_EQ(std::string(not_json.message()).rfind("p.json: not JSON: ", 0), 0u) << not_json;
  }
}

TEST(HeadProfileTest, ProfileMustMatchTheModelShape) {
  const HeadProfile p = Small();
  ModelConfig c = ShapeOf(p);
  EXPECT_TRUE(CheckProfileMatchesModel(p, c, "p.json").ok());
  c.n_layers = 30;
  EXPECT_EQ(CheckProfileMatchesModel(p, c, "p.json").message(),
            "p.json: model.n_layers: the profile was made for 2, the served model has 30");
  c = ShapeOf(p);
  c.head_dim = 64;
  EXPECT_EQ(CheckProfileMatchesModel(p, c, "p.json").message(),
            "p.json: model.head_dim: the profile was made for 4, the served model has 64");
}

TEST(HeadProfileTest, LoadsEveryJsonFileOfADirectoryByStem) {
  const HeadProfile p = Small();
  const std::filesystem::path dir = TempDir("profiles");
  ASSERT_TRUE(WriteHeadProfile(p, (dir / "a.json").string()).ok());
  ASSERT_TRUE(WriteHeadProfile(p, (dir / "b.json").string()).ok());
  WriteFile(dir / "notes.txt", "not a profile");
  absl::StatusOr<HeadProfiles> loaded = LoadHeadProfiles(dir.string(), ShapeOf(p));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);
  EXPECT_EQ(loaded->begin()->first, "a");
  EXPECT_EQ(loaded->at("b").retrieval_heads.size(), p.retrieval_heads.size());

  // One bad file fails the load, naming it.
  WriteFile(dir / "c.json", "[]");
  EXPECT_EQ(LoadHeadProfiles(dir.string(), ShapeOf(p)).status().message(),
            (dir / "c.json").string() + ": must be a JSON object");
  std::filesystem::remove(dir / "c.json");
  ModelConfig other = ShapeOf(p);
  other.n_heads = 9;
  EXPECT_EQ(LoadHeadProfiles(dir.string(), other).status().message(),
            (dir / "a.json").string() + ": model.n_heads: the profile was made for 3, the served model has 9");
  EXPECT_EQ(LoadHeadProfiles((dir / "missing").string(), ShapeOf(p)).status().code(), absl::StatusCode::kNotFound);
}

// A one-layer, one-KV-head model's cache of n tokens in pages of 4, filled
// with keys(j) and values(j), and its queries.
struct Synthetic {
  static constexpr int kDim = 4;
  static constexpr int kPage = 4;
  ModelConfig config;
  std::vector<fp16_t> keys, values;
  std::vector<int32_t> pages;
  std::vector<float> q;  // [n][n_heads][kDim]

  Synthetic(int n, int n_heads, const std::function<float(int, int)>& key, const std::function<float(int, int)>& value,
            const std::function<float(int, int, int)>& query) {
    config.n_layers = 1;
    config.n_heads = n_heads;
    config.n_kv_heads = 1;
    config.head_dim = kDim;
    const int n_pages = (n + kPage - 1) / kPage;
    keys.resize(n_pages * kPage * kDim);
    values.resize(keys.size());
    // Pages in reverse, so that the page table matters.
    for (int p = 0; p < n_pages; ++p) pages.push_back(n_pages - 1 - p);
    for (int j = 0; j < n; ++j) {
      const int slot = (pages[j / kPage] * kPage + j % kPage) * kDim;
      for (int c = 0; c < kDim; ++c) {
        keys[slot + c] = FloatToFp16(key(j, c));
        values[slot + c] = FloatToFp16(value(j, c));
      }
    }
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < n_heads; ++h) {
        for (int c = 0; c < kDim; ++c) q.push_back(query(i, h, c));
      }
    }
  }

  PagedKv Kv(int num_tokens) const { return {keys.data(), values.data(), pages.data(), kPage, 1, kDim, num_tokens}; }
};

// Observes positions [0, n) in chunks of `chunk` queries.
HeadProfile Profile(const Synthetic& s, int n, int chunk, int threads, int sink, int recent) {
  HeadProfiler profiler(s.config, {"synthetic", 0, sink, recent, 0.5}, threads);
  std::vector<int32_t> positions(n);
  for (int i = 0; i < n; ++i) positions[i] = i;
  for (int first = 0; first < n; first += chunk) {
    const int count = std::min(chunk, n - first);
    profiler.Observe(0, &s.q[first * s.config.n_heads * Synthetic::kDim], &positions[first], count,
                     s.Kv(first + count));
  }
  return profiler.Finish().value();
}

TEST(HeadProfilerTest, UniformAttentionHasClosedFormStatistics) {
  // Zero queries attend uniformly: p_ij = 1 / (i + 1). Values v_j = (j, 1, 0, 0).
  constexpr int kN = 40, kSink = 2, kRecent = 8;
  const Synthetic s(
      kN, 1, [](int j, int c) { return 0.5f + c; }, [](int j, int c) { return c == 0 ? j : c == 1 ? 1.0f : 0.0f; },
      [](int, int, int) { return 0.0f; });
  const HeadProfile p = Profile(s, kN, 16, 1, kSink, kRecent);
  double sink = 0, distance = 0, retrieval = 0;
  int restricted = 0;
  for (int i = 0; i < kN; ++i) {
    sink += 1.0 / (i + 1);
    distance += i / 2.0;
    if (i < kSink + kRecent) continue;
    // The restricted view: keys 0, 1 and i-7 .. i, uniformly.
    const double full = i / 2.0;
    double kept = 0;
    for (int j = 0; j <= i; ++j) kept += (j < kSink || j > i - kRecent) ? j : 0;
    kept /= kSink + kRecent;
    retrieval += std::abs(full - kept) / std::sqrt(full * full + 1.0);
    ++restricted;
  }
  EXPECT_EQ(p.calibration.tokens, kN);
  EXPECT_NEAR(p.heads[0].sink_mass, sink / kN, 1e-12);
  EXPECT_NEAR(p.heads[0].mean_distance, distance / kN, 1e-9);
  EXPECT_NEAR(p.heads[0].retrieval_score, retrieval / restricted, 1e-9);
}

TEST(HeadProfilerTest, SinkHeadScoresZeroAndLocalHeadStaysNear) {
  // Head 0 puts nearly all its mass on token 0, the only key along its
  // query. Head 1's logit for key j >= 1 is j, so p_ij falls as e^-(i-j):
  // a mean distance of e^-1 / (1 - e^-1) ~ 0.58 far in. Neither loses
  // much in the restricted view.
  constexpr int kN = 48;
  const auto key = [](int j, int c) { return j == 0 ? (c == 0 ? 8.0f : 0.0f) : (c == 1 ? 0.25f * j : 0.0f); };
  const auto query = [](int i, int h, int c) { return c == h ? 8.0f : 0.0f; };
  const Synthetic s(kN, 2, key, [](int j, int c) { return static_cast<float>(j + c); }, query);
  const HeadProfile one = Profile(s, kN, kN, 1, 2, 4);
  EXPECT_GT(one.head(0, 0).sink_mass, 0.99);
  EXPECT_NEAR(one.head(0, 0).mean_distance, (kN - 1) / 2.0, 0.01);
  EXPECT_LT(one.head(0, 0).retrieval_score, 1e-3);
  EXPECT_LT(one.head(0, 1).sink_mass, 0.05);
  EXPECT_NEAR(one.head(0, 1).mean_distance, 0.58, 0.03);
  EXPECT_LT(one.head(0, 1).retrieval_score, 0.01);  // the ~2% of its mass beyond 4 tokens
  // Chunks and threads change nothing.
  const HeadProfile chunked = Profile(s, kN, 5, 2, 2, 4);
  EXPECT_EQ(HeadProfileToJson(chunked), HeadProfileToJson(one));
}

TEST(HeadProfilerTest, FinishNeedsAQueryPastTheRestrictedView) {
  const Synthetic s(
      8, 1, [](int, int) { return 0.0f; }, [](int, int) { return 1.0f; }, [](int, int, int) { return 0.0f; });
  HeadProfiler profiler(s.config, {"t", 0, 4, 4, 0.5}, 1);
  const std::vector<int32_t> positions = {0, 1, 2, 3, 4, 5, 6, 7};
  profiler.Observe(0, s.q.data(), positions.data(), 8, s.Kv(8));
  EXPECT_EQ(profiler.Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(HeadProfiler(s.config, {"t", 0, 4, 4, 0.5}, 1).Finish().status().message(), "no attention was observed");
}

}  // namespace
}  // namespace attnserve
