// attnserve generate: one completion on the CPU, streamed to stdout.
#include <algorithm>
#include <cstdio>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/model/text_stream.h"
#include "engine/sampling/logits_processor.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/common_flags.h"
#include "tools/local_engine.h"

ABSL_FLAG(std::string, prompt, "", "Prompt text (special tokens such as <|im_start|> are recognised).");
ABSL_FLAG(bool, chat, false, "Render --prompt as one user message with the model's chat template.");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature; 0 is greedy.");
ABSL_FLAG(int, top_k, 0, "Sample among the k most likely tokens (0 = all).");
ABSL_FLAG(float, top_p, 1.0f, "Nucleus sampling mass.");
ABSL_FLAG(uint64_t, seed, 0, "Random seed for sampling.");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating after an end-of-generation token.");
ABSL_FLAG(bool, stats, false, "Print prefill and decode speed to stderr.");

namespace attnserve {

int RunGenerate() {
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens < 0) {
    absl::FPrintF(stderr, "error: --max_tokens must be >= 0\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<LocalEngine>> opened = OpenLocalEngine(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_threads));
  if (!opened.ok()) {
    absl::FPrintF(stderr, "error: %s\n", opened.status().ToString());
    return 1;
  }
  LocalEngine& engine = **opened;
  const Model& model = *engine.model;
  std::string prompt = absl::GetFlag(FLAGS_prompt);
  if (absl::GetFlag(FLAGS_chat)) {
    if (!model.chat_template) {
      absl::FPrintF(stderr, "error: --chat: %s\n", model.chat_template_error.ToString());
      return 1;
    }
    const ChatMessage message{"user", prompt};
    absl::StatusOr<std::string> rendered = model.chat_template->Render({&message, 1}, true);
    if (!rendered.ok()) {
      absl::FPrintF(stderr, "error: %s\n", rendered.status().ToString());
      return 1;
    }
    prompt = *rendered;
  }
  const std::vector<int32_t> ids = model.tokenizer->Encode(prompt, /*add_special=*/true, /*parse_special=*/true);
  if (ids.empty()) {
    absl::FPrintF(stderr, "error: the prompt is empty\n");
    return 2;
  }
  const int32_t context = model.config.context_length;
  if (static_cast<int32_t>(ids.size()) >= context) {
    absl::FPrintF(stderr, "error: the prompt has %d tokens; the model's context is %d\n", ids.size(), context);
    return 2;
  }
  SamplingOptions options;
  // The loop below enforces --max_tokens (0 allowed) and the context itself.
  const int32_t room = context - static_cast<int32_t>(ids.size());
  options.max_tokens = std::clamp(max_tokens, 1, room);
  options.temperature = absl::GetFlag(FLAGS_temperature);
  options.top_k = absl::GetFlag(FLAGS_top_k);
  options.top_p = absl::GetFlag(FLAGS_top_p);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  if (absl::Status s = ValidateSamplingOptions(options, model.config.vocab_size, room); !s.ok()) {
    absl::FPrintF(stderr, "error: %s\n", s.message());
    return 2;
  }
  SequenceSampler sampler(options, ids, {});
  PageTable table;
  std::vector<float> logits;
  const absl::Time t0 = absl::Now();
  if (absl::Status s = Prefill(engine, table, ids, LogitsWanted::kLast, logits); !s.ok()) {
    absl::FPrintF(stderr, "error: %s\n", s.ToString());
    return 1;
  }
  const absl::Time t1 = absl::Now();
  const bool json = absl::GetFlag(FLAGS_json);
  TextStream text;
  std::string completion;
  std::vector<int32_t> output_ids;
  int generated = 0;
  const char* finish = "length";
  std::vector<int32_t> next(1);
  while (generated < max_tokens) {
    next[0] = sampler.Sample(logits).token;
    sampler.Accept(next[0]);
    ++generated;
    if (model.tokenizer->IsEndOfGeneration(next[0]) && !absl::GetFlag(FLAGS_ignore_eos)) {
      finish = "stop";
      break;
    }
    output_ids.push_back(next[0]);
    const std::string delta = text.Push(model.tokenizer->TokenBytes(next[0]));
    completion += delta;
    if (!json) {
      std::fputs(delta.c_str(), stdout);
      std::fflush(stdout);
    }
    if (generated == max_tokens || table.num_tokens + 1 > context) break;
    logits.clear();
    if (absl::Status s = Prefill(engine, table, next, LogitsWanted::kLast, logits); !s.ok()) {
      absl::FPrintF(stderr, "error: %s\n", s.ToString());
      return 1;
    }
  }
  const absl::Time t2 = absl::Now();
  const std::string tail = text.Flush();
  completion += tail;
  if (json) {
    nlohmann::json j;
    j["prompt_token_ids"] = ids;
    j["token_ids"] = output_ids;
    j["text"] = completion;
    j["finish_reason"] = finish;
    std::puts(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::fputs(tail.c_str(), stdout);
    std::fputs("\n", stdout);
  }
  if (absl::GetFlag(FLAGS_stats)) {
    const double prefill_s = absl::ToDoubleSeconds(t1 - t0);
    const double decode_s = absl::ToDoubleSeconds(t2 - t1);
    // The first token comes from the prefill's logits; decode steps are the rest.
    const int decode_steps = generated > 0 ? generated - 1 : 0;
    absl::FPrintF(stderr,
                  "prompt tokens: %d, prefill: %.1f tok/s (%.3f s); generated: %d, decode: %.1f tok/s; finish: %s\n",
                  ids.size(), ids.size() / prefill_s, prefill_s, generated,
                  decode_s > 0 ? decode_steps / decode_s : 0.0, finish);
  }
  return 0;
}

}  // namespace attnserve
