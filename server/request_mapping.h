// Protobuf requests -> engine requests, and engine deltas -> protobuf
// responses. Every check of a request happens here, at the boundary; errors
// are INVALID_ARGUMENT naming the field as the client spells it
// ("sampling.temperature"), or UNIMPLEMENTED for a policy not built yet.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnserve/v1/generation.pb.h"
#include "engine/core/request.h"
#include "engine/model/model.h"

namespace attnserve {

inline constexpr size_t kMaxRequestIdBytes = 128;
inline constexpr int32_t kMinPriority = -100;
inline constexpr int32_t kMaxPriority = 100;
inline constexpr uint32_t kDefaultMaxTokens = 16;

// OK for an absent, empty, full-cache or dense policy; UNIMPLEMENTED
// "attention.<field>: not implemented yet" for anything else.
absl::Status CheckAttentionPolicy(const v1::AttentionPolicy& policy);

// The prompt as the CLI builds it: text tokenized with BOS and special
// tokens recognised; messages rendered with the chat template first.
absl::StatusOr<std::vector<int32_t>> PromptTokenIds(const v1::GenerateRequest& request, const Model& model);

// SamplingParams with their documented defaults, validated for a prompt of
// `prompt_tokens` tokens.
absl::StatusOr<SamplingOptions> ToSamplingOptions(const v1::SamplingParams& params, const ModelConfig& config,
                                                  int32_t prompt_tokens);

// Every check of a Generate request. request_id, arrival and deadline are
// the caller's to fill in.
absl::StatusOr<GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& request, const Model& model);

// The tokens of a Score request (text tokenized as `attnserve score` does).
absl::StatusOr<std::vector<int32_t>> ScoreTokenIds(const v1::ScoreRequest& request, const Model& model);

v1::GenerateResponse ToGenerateResponse(GenerationDelta&& delta, const std::string& request_id);
v1::FinishReason ToProtoFinishReason(FinishReason reason);

// Replaces every invalid UTF-8 sequence with U+FFFD (proto3 strings must be
// valid UTF-8; a model may emit byte tokens that never form a character).
std::string ValidUtf8(absl::string_view bytes);

}  // namespace attnserve
