#include "engine/sampling/sampling_options.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace attnserve {
namespace {

// `range` is written as the message shows it, e.g. "[0, 100]" or "(0, 1]".
template <typename T>
absl::Status OutOfRange(absl::string_view field, absl::string_view range, T value) {
  return absl::InvalidArgumentError(absl::StrCat("sampling.", field, ": must be in ", range, ", got ", value));
}

// False for NaN, so every float check below also rejects NaN.
bool InClosed(float v, float lo, float hi) { return v >= lo && v <= hi; }

absl::Status CheckTokenId(absl::string_view field, int32_t token, int32_t vocab_size) {
  if (token >= 0 && token < vocab_size) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("sampling.", field, ": token ", token, " is outside the vocabulary [0, ", vocab_size, ")"));
}

}  // namespace

absl::Status ValidateSamplingOptions(const SamplingOptions& o, int32_t vocab_size, int32_t max_new_tokens_allowed) {
  if (o.max_tokens < 1 || o.max_tokens > max_new_tokens_allowed) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.max_tokens: must be in [1, ", max_new_tokens_allowed,
                                                   "] (the model's context minus the prompt), got ", o.max_tokens));
  }
  if (o.min_tokens < 0 || o.min_tokens > o.max_tokens) {
    return OutOfRange("min_tokens", absl::StrCat("[0, max_tokens = ", o.max_tokens, "]"), o.min_tokens);
  }
  if (!InClosed(o.temperature, 0.0f, kMaxTemperature)) {
    return OutOfRange("temperature", absl::StrCat("[0, ", kMaxTemperature, "]"), o.temperature);
  }
  if (o.top_k < 0 || o.top_k > vocab_size) {
    return OutOfRange("top_k", absl::StrCat("[0, ", vocab_size, "] (0 = all tokens)"), o.top_k);
  }
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) return OutOfRange("top_p", "(0, 1]", o.top_p);
  if (!InClosed(o.min_p, 0.0f, 1.0f)) return OutOfRange("min_p", "[0, 1]", o.min_p);
  if (o.stop.size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.stop: at most ", kMaxStopStrings, " strings, got ", o.stop.size()));
  }
  for (size_t i = 0; i < o.stop.size(); ++i) {
    if (o.stop[i].empty() || o.stop[i].size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "]: must be 1 to ", kMaxStopStringBytes,
                                                     " bytes long, got ", o.stop[i].size()));
    }
  }
  if (o.stop_token_ids.size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.stop_token_ids: at most ", kMaxStopTokenIds, " tokens, got ", o.stop_token_ids.size()));
  }
  for (size_t i = 0; i < o.stop_token_ids.size(); ++i) {
    if (absl::Status s = CheckTokenId(absl::StrCat("stop_token_ids[", i, "]"), o.stop_token_ids[i], vocab_size);
        !s.ok()) {
      return s;
    }
  }
  if (!(o.repetition_penalty > 0.0f && o.repetition_penalty <= kMaxRepetitionPenalty)) {
    return OutOfRange("repetition_penalty", absl::StrCat("(0, ", kMaxRepetitionPenalty, "] (1 = off)"),
                      o.repetition_penalty);
  }
  const std::string penalty_range =
      absl::StrCat("[-", kMaxPresenceFrequencyPenalty, ", ", kMaxPresenceFrequencyPenalty, "]");
  if (!InClosed(o.presence_penalty, -kMaxPresenceFrequencyPenalty, kMaxPresenceFrequencyPenalty)) {
    return OutOfRange("presence_penalty", penalty_range, o.presence_penalty);
  }
  if (!InClosed(o.frequency_penalty, -kMaxPresenceFrequencyPenalty, kMaxPresenceFrequencyPenalty)) {
    return OutOfRange("frequency_penalty", penalty_range, o.frequency_penalty);
  }
  if (o.logit_bias.size() > kMaxLogitBiasEntries) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.logit_bias: at most ", kMaxLogitBiasEntries, " entries, got ", o.logit_bias.size()));
  }
  for (const auto& [token, bias] : o.logit_bias) {
    if (absl::Status s = CheckTokenId("logit_bias", token, vocab_size); !s.ok()) return s;
    if (!InClosed(bias, -kMaxLogitBias, kMaxLogitBias)) {
      return OutOfRange(absl::StrCat("logit_bias[", token, "]"), absl::StrCat("[-", kMaxLogitBias, ", ", kMaxLogitBias, "]"),
                        bias);
    }
  }
  if (o.top_logprobs < 0 || o.top_logprobs > kMaxTopLogprobs) {
    return OutOfRange("top_logprobs", absl::StrCat("[0, ", kMaxTopLogprobs, "]"), o.top_logprobs);
  }
  if (o.top_logprobs > 0 && !o.logprobs) {
    return absl::InvalidArgumentError("sampling.top_logprobs: needs logprobs = true");
  }
  if (o.n < 1 || o.n > kMaxCompletions) return OutOfRange("n", absl::StrCat("[1, ", kMaxCompletions, "]"), o.n);
  return absl::OkStatus();
}

}  // namespace attnserve
