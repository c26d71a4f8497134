// attnserve profile: a head profile (engine/policy/head_profile.h) of the
// model over calibration text, for the server's --profile-dir.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/policy/head_profiler.h"
#include "tools/commands.h"
#include "tools/common_flags.h"
#include "tools/local_engine.h"

ABSL_FLAG(std::string, out, "", "profile: where to write the head profile (JSON).");
ABSL_FLAG(double, retrieval_fraction, 0.25, "profile: share of heads, by retrieval score, classed retrieval heads.");
ABSL_FLAG(int, sink_tokens, 64, "profile: first tokens the restricted view of the retrieval score keeps.");
ABSL_FLAG(int, recent_tokens, 256, "profile: last tokens the restricted view of the retrieval score keeps.");

namespace attnserve {
namespace {

int Usage(const std::string& message) {
  absl::FPrintF(stderr, "error: %s\n", message);
  return 2;
}

}  // namespace

int RunProfile() {
  const std::string text_path = absl::GetFlag(FLAGS_text_file);
  const std::string out_path = absl::GetFlag(FLAGS_out);
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  HeadProfileCalibration calibration;
  calibration.text = std::filesystem::path(text_path).filename().string();
  calibration.sink_tokens = absl::GetFlag(FLAGS_sink_tokens);
  calibration.recent_tokens = absl::GetFlag(FLAGS_recent_tokens);
  calibration.retrieval_fraction = absl::GetFlag(FLAGS_retrieval_fraction);
  if (out_path.empty()) return Usage("--out is required");
  if (max_tokens < 1) return Usage("--max_tokens must be >= 1");
  if (calibration.sink_tokens < 0) return Usage("--sink_tokens must be >= 0");
  if (calibration.recent_tokens < 1) return Usage("--recent_tokens must be >= 1");
  if (!(calibration.retrieval_fraction > 0.0 && calibration.retrieval_fraction <= 1.0)) {
    return Usage("--retrieval_fraction must be in (0, 1]");
  }
  std::ifstream in(text_path, std::ios::binary);
  if (text_path.empty() || !in) return Usage(absl::StrFormat("cannot read --text_file '%s'", text_path));
  std::stringstream text;
  text << in.rdbuf();

  absl::StatusOr<std::unique_ptr<LocalEngine>> opened =
      OpenLocalEngine(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_threads));
  if (!opened.ok()) {
    absl::FPrintF(stderr, "error: %s\n", opened.status().ToString());
    return 1;
  }
  LocalEngine& engine = **opened;
  const ModelConfig& config = engine.model->config;
  // Tokenized as `attnserve score` does.
  std::vector<int32_t> ids = engine.model->tokenizer->Encode(text.str(), /*add_special=*/true, /*parse_special=*/false);
  ids.resize(std::min<size_t>(ids.size(), std::min(max_tokens, config.context_length)));
  const int32_t restricted_from = calibration.sink_tokens + calibration.recent_tokens;
  if (static_cast<int32_t>(ids.size()) <= restricted_from) {
    return Usage(absl::StrFormat(
        "the text gives %d tokens; the retrieval score needs more than --sink_tokens + --recent_tokens = %d",
        ids.size(), restricted_from));
  }

  HeadProfiler profiler(config, calibration, absl::GetFlag(FLAGS_threads));
  const int64_t chunks = (static_cast<int64_t>(ids.size()) + engine.step_tokens - 1) / engine.step_tokens;
  const absl::Time start = absl::Now();
  engine.backend->SetAttentionObserver([&](const AttentionObservation& o) {
    const int32_t n = static_cast<int32_t>(o.step->tokens.size());
    profiler.Observe(o.layer, o.q, o.positions, n, o.kv);
    absl::FPrintF(stderr, "\rprofiling %d tokens: chunk %d/%d, layer %2d/%d", ids.size(),
                  o.step->first_pos / engine.step_tokens + 1, chunks, o.layer + 1, config.n_layers);
  });
  PageTable table;
  std::vector<float> no_logits;
  if (absl::Status s = Prefill(engine, table, ids, LogitsWanted::kNone, no_logits); !s.ok()) {
    absl::FPrintF(stderr, "\nerror: %s\n", s.ToString());
    return 1;
  }
  absl::FPrintF(stderr, " (%.1f s)\n", absl::ToDoubleSeconds(absl::Now() - start));
  absl::StatusOr<HeadProfile> profile = profiler.Finish();
  if (!profile.ok()) {
    absl::FPrintF(stderr, "error: %s\n", profile.status().ToString());
    return 1;
  }
  if (absl::Status s = WriteHeadProfile(*profile, out_path); !s.ok()) {
    absl::FPrintF(stderr, "error: %s\n", s.ToString());
    return 1;
  }
  absl::PrintF("wrote %s: %d layers x %d heads over %d tokens of %s, %d retrieval heads\n", out_path,
               profile->n_layers, profile->n_heads, profile->calibration.tokens, calibration.text,
               profile->retrieval_heads.size());
  return 0;
}

}  // namespace attnserve
