// attnserve.v1.AttentionPolicy (protobuf) <-> PolicySpec (the engine's
// mirror), and the server's default policy (--default-attention).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attnserve/v1/attention.pb.h"
#include "engine/model/model_config.h"
#include "engine/policy/head_profile.h"
#include "engine/policy/policy_spec.h"

namespace attnserve {

// Field by field; only enum values outside the proto's enums can fail
// (INVALID_ARGUMENT naming the field). Values are the planner's to check.
absl::StatusOr<PolicySpec> ToPolicySpec(const v1::AttentionPolicy& policy);

// A policy in protobuf's JSON mapping (proto field names or lowerCamelCase),
// e.g. {"streaming": {"window_tokens": 1024, "positions": "ORIGINAL"}}.
// INVALID_ARGUMENT with the parser's message, which names the field.
absl::StatusOr<v1::AttentionPolicy> ParseAttentionPolicyJson(absl::string_view json);
// The same mapping with proto field names; "{}" for the empty policy.
std::string AttentionPolicyJson(const v1::AttentionPolicy& policy);

// A default policy must plan, for any prompt: valid, implemented, naming a
// loaded profile if any, and without emphasis spans (they point into one
// prompt).
absl::Status CheckDefaultAttention(const v1::AttentionPolicy& policy, const ModelConfig& config,
                                   const HeadProfiles& profiles);

}  // namespace attnserve
