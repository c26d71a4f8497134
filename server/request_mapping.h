// Protobuf requests -> engine requests, and engine deltas -> protobuf
// responses. Every check of a request happens here, at the boundary; errors
// are INVALID_ARGUMENT naming the field as the client spells it
// ("sampling.temperature", "attention.emphasis.spans[0]"), or UNIMPLEMENTED
// for a policy not built yet.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attnserve/v1/generation.pb.h"
#include "engine/core/request.h"
#include "engine/model/model.h"
#include "engine/policy/planner.h"

namespace attnserve {

inline constexpr size_t kMaxRequestIdBytes = 128;
inline constexpr int32_t kMinPriority = -100;
inline constexpr int32_t kMaxPriority = 100;
inline constexpr uint32_t kDefaultMaxTokens = 16;

// A prompt's token ids and what an attention policy needs to know of it.
struct MappedPrompt {
  std::vector<int32_t> ids;
  PromptInfo info;
  std::string field;  // where it came from: prompt, messages or prompt_token_ids
};

// The prompt as the CLI builds it: text tokenized with BOS and special
// tokens recognised; messages rendered with the chat template first. Its
// length is checked against the request's plan by CheckPromptLength.
absl::StatusOr<MappedPrompt> GeneratePrompt(const v1::GenerateRequest& request, const Model& model);

// The prompt leaves room for a generated token in the model's context, or
// under streaming positions=CACHE (`plan`) in SequenceTokenLimit.
absl::Status CheckPromptLength(const MappedPrompt& prompt, const ModelConfig& config, const AttentionPlan* plan);

// The request's policy (`policy` when present, else the server default)
// planned for its prompt, with the server's head profiles to name.
// INVALID_ARGUMENT or UNIMPLEMENTED naming the field "attention.<field>".
absl::StatusOr<std::shared_ptr<const AttentionPlan>> PlanRequestAttention(const v1::AttentionPolicy* policy,
                                                                          const v1::AttentionPolicy& server_default,
                                                                          const ModelConfig& config,
                                                                          const PromptInfo& prompt,
                                                                          const HeadProfiles& profiles);

// SamplingParams with their documented defaults, validated for a prompt of
// `prompt_tokens` tokens under `plan` (null: dense): max_tokens up to the
// model's context, or past it for streaming positions=CACHE.
absl::StatusOr<SamplingOptions> ToSamplingOptions(const v1::SamplingParams& params, const ModelConfig& config,
                                                  int32_t prompt_tokens, const AttentionPlan* plan);

// Every check of a Generate request. request_id, arrival and deadline are
// the caller's to fill in.
absl::StatusOr<GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& request, const Model& model,
                                                      const v1::AttentionPolicy& default_attention,
                                                      const HeadProfiles& profiles);

// The tokens of a Score request (text tokenized as `attnserve score` does)
// and its planned policy.
struct ScoreInput {
  std::vector<int32_t> token_ids;
  std::shared_ptr<const AttentionPlan> attention;
};
absl::StatusOr<ScoreInput> ToScoreInput(const v1::ScoreRequest& request, const Model& model,
                                        const v1::AttentionPolicy& default_attention, const HeadProfiles& profiles);

v1::GenerateResponse ToGenerateResponse(GenerationDelta&& delta, const std::string& request_id);
v1::FinishReason ToProtoFinishReason(FinishReason reason);

// Replaces every invalid UTF-8 sequence with U+FFFD (proto3 strings must be
// valid UTF-8; a model may emit byte tokens that never form a character).
std::string ValidUtf8(absl::string_view bytes);

}  // namespace attnserve
