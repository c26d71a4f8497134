#include "server/request_mapping.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "server/policy_mapping.h"

namespace attnserve {
namespace {

// Field-named errors of engine validators say "temperature: ..."; the client
// wrote "sampling.temperature".
absl::Status UnderField(absl::Status status, absl::string_view parent) {
  if (status.ok() || absl::StartsWith(status.message(), parent)) return status;
  return absl::Status(status.code(), absl::StrCat(parent, ".", status.message()));
}

absl::StatusOr<std::vector<int32_t>> ChatPromptIds(const v1::ChatMessages& chat, const Model& model) {
  if (chat.messages().empty()) return absl::InvalidArgumentError("messages: is empty");
  std::vector<ChatMessage> messages;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant") {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].role: '", m.role(), "' is not one of system, user, assistant"));
    }
    messages.push_back({m.role(), m.content()});
  }
  if (!model.chat_template) {
    return absl::InvalidArgumentError(
        absl::StrCat("messages: the model has no usable chat template (", model.chat_template_error.message(),
                     "); send prompt or prompt_token_ids"));
  }
  absl::StatusOr<std::string> text = model.chat_template->Render(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) return UnderField(text.status(), "messages");
  return model.tokenizer->Encode(*text, /*add_special=*/true, /*parse_special=*/true);
}

absl::StatusOr<std::vector<int32_t>> CheckedIds(const v1::TokenIds& ids, absl::string_view field, int32_t vocab_size) {
  std::vector<int32_t> out;
  out.reserve(ids.ids_size());
  for (int i = 0; i < ids.ids_size(); ++i) {
    if (ids.ids(i) >= static_cast<uint32_t>(vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "]: token ", ids.ids(i),
                                                     " is outside the vocabulary [0, ", vocab_size, ")"));
    }
    out.push_back(static_cast<int32_t>(ids.ids(i)));
  }
  return out;
}

}  // namespace

absl::StatusOr<MappedPrompt> GeneratePrompt(const v1::GenerateRequest& request, const Model& model) {
  MappedPrompt prompt;
  std::vector<int32_t>& ids = prompt.ids;
  absl::string_view field;
  switch (request.input_case()) {
    case v1::GenerateRequest::kPrompt: {
      field = "prompt";
      if (request.prompt().empty()) return absl::InvalidArgumentError("prompt: is empty");
      // Offsets for emphasis spans given in CHARS.
      ids = model.tokenizer->EncodeWithOffsets(request.prompt(), /*add_special=*/true, /*parse_special=*/true,
                                               &prompt.info.token_offsets);
      prompt.info.is_text = true;
      prompt.info.text_bytes = static_cast<int64_t>(request.prompt().size());
      break;
    }
    case v1::GenerateRequest::kMessages: {
      field = "messages";
      ATTN_ASSIGN_OR_RETURN(ids, ChatPromptIds(request.messages(), model));
      break;
    }
    case v1::GenerateRequest::kPromptTokenIds: {
      field = "prompt_token_ids";
      ATTN_ASSIGN_OR_RETURN(ids, CheckedIds(request.prompt_token_ids(), "prompt_token_ids", model.config.vocab_size));
      break;
    }
    case v1::GenerateRequest::INPUT_NOT_SET:
      return absl::InvalidArgumentError("input: set one of prompt, messages, prompt_token_ids");
  }
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": has no tokens"));
  prompt.field = std::string(field);
  prompt.info.num_tokens = static_cast<int32_t>(ids.size());
  return prompt;
}

absl::StatusOr<std::shared_ptr<const AttentionPlan>> PlanRequestAttention(const v1::AttentionPolicy* policy,
                                                                          const v1::AttentionPolicy& server_default,
                                                                          const ModelConfig& config,
                                                                          const PromptInfo& prompt,
                                                                          const HeadProfiles& profiles) {
  ATTN_ASSIGN_OR_RETURN(const PolicySpec spec, ToPolicySpec(policy != nullptr ? *policy : server_default));
  return PlanAttention(spec, config, prompt, &profiles);
}

absl::Status CheckPromptLength(const MappedPrompt& prompt, const ModelConfig& config, const AttentionPlan* plan) {
  // One position is left for the first generated token.
  const int32_t limit = SequenceTokenLimit(plan, config.context_length);
  if (static_cast<int64_t>(prompt.ids.size()) < limit) return absl::OkStatus();
  if (limit != config.context_length) {
    return absl::InvalidArgumentError(absl::StrCat(prompt.field, ": ", prompt.ids.size(), " tokens; streaming positions ",
                                                   "CACHE holds sequences of at most ", limit, " tokens"));
  }
  return absl::InvalidArgumentError(absl::StrCat(prompt.field, ": ", prompt.ids.size(), " tokens; the model's context of ",
                                                 limit, " holds prompts of at most ", limit - 1));
}

absl::StatusOr<SamplingOptions> ToSamplingOptions(const v1::SamplingParams& params, const ModelConfig& config,
                                                  int32_t prompt_tokens, const AttentionPlan* plan) {
  // Unsigned fields saturate at INT32_MAX so that huge values fail
  // validation as too large instead of wrapping around.
  const auto sat = [](uint32_t v) {
    return static_cast<int32_t>(std::min<uint32_t>(v, std::numeric_limits<int32_t>::max()));
  };
  SamplingOptions o;
  o.max_tokens = params.has_max_tokens() ? sat(params.max_tokens()) : static_cast<int32_t>(kDefaultMaxTokens);
  o.min_tokens = sat(params.min_tokens());
  o.temperature = params.temperature();
  o.top_k = sat(params.top_k());
  o.top_p = params.has_top_p() ? params.top_p() : 1.0f;
  o.min_p = params.min_p();
  if (params.has_seed()) o.seed = params.seed();
  o.stop.assign(params.stop().begin(), params.stop().end());
  for (uint32_t id : params.stop_token_ids()) o.stop_token_ids.push_back(sat(id));
  o.ignore_eos = params.ignore_eos();
  o.repetition_penalty = params.has_repetition_penalty() ? params.repetition_penalty() : 1.0f;
  o.presence_penalty = params.presence_penalty();
  o.frequency_penalty = params.frequency_penalty();
  // Sorted, so that the same request always builds the same options.
  for (const auto& [id, bias] : params.logit_bias()) o.logit_bias.emplace_back(sat(id), bias);
  std::sort(o.logit_bias.begin(), o.logit_bias.end());
  o.logprobs = params.logprobs();
  o.top_logprobs = sat(params.top_logprobs());
  o.n = params.has_n() ? sat(params.n()) : 1;
  const int32_t limit = SequenceTokenLimit(plan, config.context_length);
  const int32_t room = limit - prompt_tokens;
  if (limit != config.context_length && (o.max_tokens < 1 || o.max_tokens > room)) {
    // Past the model's context: the engine's message would name the context.
    return absl::InvalidArgumentError(absl::StrCat("sampling.max_tokens: must be in [1, ", room, "] (streaming ",
                                                   "positions CACHE runs past the model's context up to ", limit,
                                                   " tokens), got ", o.max_tokens));
  }
  ATTN_RETURN_IF_ERROR(UnderField(ValidateSamplingOptions(o, config.vocab_size, room), "sampling"));
  return o;
}

absl::StatusOr<GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& request, const Model& model,
                                                      const v1::AttentionPolicy& default_attention,
                                                      const HeadProfiles& profiles) {
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("request_id: ", request.request_id().size(),
                                                   " bytes; at most ", kMaxRequestIdBytes));
  }
  if (request.priority() < kMinPriority || request.priority() > kMaxPriority) {
    return absl::InvalidArgumentError(absl::StrCat("priority: ", request.priority(), " is outside [", kMinPriority,
                                                   ", ", kMaxPriority, "]"));
  }
  ATTN_ASSIGN_OR_RETURN(MappedPrompt prompt, GeneratePrompt(request, model));
  GenerationRequest out;
  ATTN_ASSIGN_OR_RETURN(out.attention, PlanRequestAttention(request.has_attention() ? &request.attention() : nullptr,
                                                            default_attention, model.config, prompt.info, profiles));
  ATTN_RETURN_IF_ERROR(CheckPromptLength(prompt, model.config, out.attention.get()));
  out.prompt_ids = std::move(prompt.ids);
  ATTN_ASSIGN_OR_RETURN(out.sampling, ToSamplingOptions(request.sampling(), model.config,
                                                        static_cast<int32_t>(out.prompt_ids.size()),
                                                        out.attention.get()));
  out.priority = request.priority();
  return out;
}

absl::StatusOr<ScoreInput> ToScoreInput(const v1::ScoreRequest& request, const Model& model,
                                        const v1::AttentionPolicy& default_attention, const HeadProfiles& profiles) {
  ScoreInput out;
  PromptInfo info;
  switch (request.input_case()) {
    case v1::ScoreRequest::kText:
      if (request.text().empty()) return absl::InvalidArgumentError("text: is empty");
      out.token_ids = model.tokenizer->EncodeWithOffsets(request.text(), /*add_special=*/true,
                                                         /*parse_special=*/false, &info.token_offsets);
      info.is_text = true;
      info.text_bytes = static_cast<int64_t>(request.text().size());
      break;
    case v1::ScoreRequest::kTokenIds: {
      ATTN_ASSIGN_OR_RETURN(out.token_ids, CheckedIds(request.token_ids(), "token_ids", model.config.vocab_size));
      break;
    }
    case v1::ScoreRequest::INPUT_NOT_SET:
      return absl::InvalidArgumentError("input: set one of text, token_ids");
  }
  info.num_tokens = static_cast<int32_t>(out.token_ids.size());
  if (request.has_prompt_tokens()) {
    if (request.prompt_tokens() < 1 || request.prompt_tokens() > out.token_ids.size()) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_tokens: must be in [1, ", out.token_ids.size(),
                                                     "] (got ", request.prompt_tokens(), ")"));
    }
    info.num_tokens = static_cast<int32_t>(request.prompt_tokens());
    if (info.is_text) info.token_offsets.resize(info.num_tokens);
  }
  ATTN_ASSIGN_OR_RETURN(out.attention, PlanRequestAttention(request.has_attention() ? &request.attention() : nullptr,
                                                            default_attention, model.config, info, profiles));
  return out;
}

v1::FinishReason ToProtoFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case FinishReason::kStop:
      return v1::STOP;
    case FinishReason::kLength:
      return v1::LENGTH;
    case FinishReason::kAbort:
      return v1::ABORT;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

v1::GenerateResponse ToGenerateResponse(GenerationDelta&& delta, const std::string& request_id) {
  v1::GenerateResponse r;
  r.set_request_id(request_id);
  r.set_index(static_cast<uint32_t>(delta.index));
  r.mutable_token_ids()->Add(delta.token_ids.begin(), delta.token_ids.end());
  r.set_text(ValidUtf8(delta.text));
  for (const TokenLogprob& l : delta.logprobs) {
    v1::TokenLogprob* p = r.add_logprobs();
    p->set_logprob(l.logprob);
    for (const TopLogprob& t : l.top) {
      v1::TopLogprob* top = p->add_top_logprobs();
      top->set_token_id(static_cast<uint32_t>(t.token));
      top->set_logprob(t.logprob);
    }
  }
  if (delta.finish_reason == FinishReason::kNone && delta.error.ok()) return r;
  r.set_finished(true);
  // A failed completion (deadline, shutdown) reports ABORT; the RPC status
  // says why.
  r.set_finish_reason(delta.error.ok() ? ToProtoFinishReason(delta.finish_reason) : v1::ABORT);
  r.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(delta.prompt_tokens));
  r.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(delta.completion_tokens));
  r.mutable_usage()->set_cached_prompt_tokens(static_cast<uint32_t>(delta.cached_prompt_tokens));
  r.mutable_metrics()->set_queue_seconds(delta.queue_seconds);
  r.mutable_metrics()->set_time_to_first_token_seconds(delta.time_to_first_token_seconds);
  return r;
}

std::string ValidUtf8(absl::string_view s) {
  constexpr char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto lead = static_cast<unsigned char>(s[i]);
    if (lead < 0x80) {
      out += s[i++];
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    uint32_t min = 0;  // smallest code point of this length: shorter forms are overlong
    if ((lead & 0xE0) == 0xC0) {
      len = 2, cp = lead & 0x1F, min = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
      len = 3, cp = lead & 0x0F, min = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
      len = 4, cp = lead & 0x07, min = 0x10000;
    }
    size_t n = 1;
    while (n < len && i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) {
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + n]) & 0x3F);
      ++n;
    }
    if (len != 0 && n == len && cp >= min && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF)) {
      out.append(s.data() + i, len);
    } else {
      out += kReplacement;
    }
    i += n;
  }
  return out;
}

}  // namespace attnserve
