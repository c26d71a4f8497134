// AttentionPolicy (as PolicySpec) -> validated, per-layer/per-head
// AttentionPlan, DESIGN.md §4.
//
// Errors name the field by its proto path, as the client wrote it:
//   INVALID_ARGUMENT "attention.zero_tuning.gamma: must be > 0 (got -1)" for
//     a bad value, an index out of range, a span outside the prompt, or a
//     combination that makes no sense (act with linear, sparse with
//     streaming positions CACHE, ...);
//   UNIMPLEMENTED "attention.act: not implemented yet" for a valid policy
//     that this engine does not run yet (never a silent fallback).
// Every value is validated before anything is reported unimplemented, so a
// request learns about its mistakes first.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"
#include "engine/model/tokenizer.h"
#include "engine/policy/attention_plan.h"
#include "engine/policy/head_profile.h"
#include "engine/policy/policy_spec.h"

namespace attnserve {

// Defaults of the policy fields, as attention.proto documents them.
inline constexpr uint32_t kDefaultStreamingSinkTokens = 4;
inline constexpr float kDefaultActBeta = 0.4f;
inline constexpr float kDefaultActTau = 0.1f;
inline constexpr float kDefaultEmphasisAlpha = 0.01f;
inline constexpr uint32_t kDefaultDuoSinkTokens = 64;
inline constexpr uint32_t kDefaultDuoRecentTokens = 256;
inline constexpr uint32_t kDefaultQuestDenseLayers = 2;
inline constexpr size_t kMaxEmphasisSpans = 256;

// The prompt a policy applies to: its length, and for a text prompt where
// each token lies in the text, which emphasis spans in CHARS need.
struct PromptInfo {
  int32_t num_tokens = 0;
  bool is_text = false;                    // false for chat messages and token ids
  int64_t text_bytes = 0;
  std::vector<TokenOffset> token_offsets;  // [num_tokens] when is_text; empty ranges for added tokens (BOS)
};

// The policy with the heads that the profile it names (spec.profile, one of
// `profiles`; null: none loaded) classes filled in where the policy leaves
// them empty: duo.retrieval_heads. ACT keeps its default heads: profiles do
// not class ACT heads yet. INVALID_ARGUMENT "attention.profile: unknown
// profile \"x\" (loaded: a, b)" for a name not loaded.
absl::StatusOr<PolicySpec> ResolveProfile(const PolicySpec& spec, const HeadProfiles* profiles);

// `profiles` were made for `config`'s model (their heads are in range); the
// policy is planned as ResolveProfile resolves it.
absl::StatusOr<std::shared_ptr<const AttentionPlan>> PlanAttention(const PolicySpec& spec, const ModelConfig& config,
                                                                   const PromptInfo& prompt,
                                                                   const HeadProfiles* profiles = nullptr);

}  // namespace attnserve
