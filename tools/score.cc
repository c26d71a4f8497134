// attnserve score: per-token log-probabilities and perplexity of a text.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "engine/sampling/sampler.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/common_flags.h"
#include "tools/local_engine.h"

ABSL_FLAG(int, max_text_tokens, 0, "Score only the first N tokens (0 = all; at most the model's context).");
ABSL_FLAG(std::string, dump_logits, "", "Also write all logits as float32 [tokens][vocab] to this file.");

namespace attnserve {

int RunScore() {
  std::ifstream in(absl::GetFlag(FLAGS_text_file), std::ios::binary);
  if (!in) {
    absl::FPrintF(stderr, "error: cannot read --text_file '%s'\n", absl::GetFlag(FLAGS_text_file));
    return 2;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  absl::StatusOr<std::unique_ptr<LocalEngine>> opened = OpenLocalEngine(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_threads));
  if (!opened.ok()) {
    absl::FPrintF(stderr, "error: %s\n", opened.status().ToString());
    return 1;
  }
  LocalEngine& engine = **opened;
  const Model& model = *engine.model;
  std::vector<int32_t> ids = model.tokenizer->Encode(buffer.str(), /*add_special=*/true, /*parse_special=*/false);
  const int limit = absl::GetFlag(FLAGS_max_text_tokens);
  if (limit > 0 && static_cast<int>(ids.size()) > limit) ids.resize(limit);
  if (ids.size() < 2) {
    absl::FPrintF(stderr, "error: the text has fewer than 2 tokens\n");
    return 2;
  }
  if (static_cast<int32_t>(ids.size()) > model.config.context_length) {
    absl::FPrintF(stderr, "error: the text has %d tokens; the model's context is %d (use --max_text_tokens)\n",
                  ids.size(), model.config.context_length);
    return 2;
  }
  PageTable table;
  std::vector<float> logits;
  if (absl::Status s = Prefill(engine, table, ids, LogitsWanted::kAll, logits); !s.ok()) {
    absl::FPrintF(stderr, "error: %s\n", s.ToString());
    return 1;
  }
  const size_t vocab = model.config.vocab_size;
  std::vector<float> logprobs(ids.size(), 0.0f), row(vocab);
  std::vector<int32_t> argmax(ids.size());
  double nll = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::span<const float> l(&logits[i * vocab], vocab);
    argmax[i] = ArgMax(l);
    if (i + 1 < ids.size()) {
      LogSoftmax(l, row);
      logprobs[i + 1] = row[ids[i + 1]];
      nll -= row[ids[i + 1]];
    }
  }
  const double perplexity = std::exp(nll / static_cast<double>(ids.size() - 1));
  if (const std::string path = absl::GetFlag(FLAGS_dump_logits); !path.empty()) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
    if (!out) {
      absl::FPrintF(stderr, "error: cannot write --dump_logits '%s'\n", path);
      return 1;
    }
  }
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j;
    j["token_ids"] = ids;
    j["token_logprobs"] = logprobs;  // the first token has no context: 0
    j["argmax_ids"] = argmax;        // argmax_ids[i] predicts token i + 1
    j["perplexity"] = perplexity;
    std::puts(j.dump().c_str());
  } else {
    for (size_t i = 1; i < ids.size(); ++i) {
      absl::PrintF("%6d %8d %10.4f %s\n", i, ids[i], logprobs[i], nlohmann::json(model.tokenizer->TokenBytes(ids[i])).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    absl::PrintF("tokens: %d, perplexity: %.4f\n", ids.size(), perplexity);
  }
  return 0;
}

}  // namespace attnserve
