#include "engine/policy/planner.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "engine/common/status_macros.h"

namespace attnserve {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("attention.", field, ": ", message));
}

absl::Status Unimplemented(absl::string_view field, absl::string_view message = "not implemented yet") {
  return absl::UnimplementedError(absl::StrCat("attention.", field, ": ", message));
}

std::string Indexed(absl::string_view field, size_t i) { return absl::StrCat(field, "[", i, "]"); }

absl::Status CheckPositive(float v, absl::string_view field) {
  if (!std::isfinite(v)) return Invalid(field, absl::StrCat("must be finite (got ", v, ")"));
  if (v <= 0.0f) return Invalid(field, absl::StrCat("must be > 0 (got ", v, ")"));
  return absl::OkStatus();
}

absl::Status CheckFinite(float v, absl::string_view field) {
  if (!std::isfinite(v)) return Invalid(field, absl::StrCat("must be finite (got ", v, ")"));
  return absl::OkStatus();
}

// v in (0, 1], or (0, 1) when one_allowed is false.
absl::Status CheckFraction(float v, absl::string_view field, bool one_allowed) {
  const bool ok = v > 0.0f && (one_allowed ? v <= 1.0f : v < 1.0f);
  if (ok) return absl::OkStatus();
  return Invalid(field, absl::StrCat("must be in (0, 1", one_allowed ? "]" : ")", " (got ", v, ")"));
}

absl::Status CheckPerHeadCount(size_t count, const ModelConfig& c, absl::string_view field) {
  const size_t expected = static_cast<size_t>(c.n_layers) * c.n_heads;
  if (count == expected) return absl::OkStatus();
  return Invalid(field, absl::StrCat("expected ", expected, " values (n_layers * n_heads), got ", count));
}

// The indices listed in `field` as a mask over [0, limit); every index when
// the list is empty (the policy's default set).
absl::StatusOr<std::vector<bool>> IndexMask(const std::vector<uint32_t>& list, int32_t limit, absl::string_view field,
                                            absl::string_view noun) {
  std::vector<bool> mask(limit, list.empty());
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] >= static_cast<uint32_t>(limit)) {
      return Invalid(Indexed(field, i), absl::StrCat(noun, " ", list[i], " is out of range [0, ", limit, ")"));
    }
    mask[list[i]] = true;
  }
  return mask;
}

// The heads (layer x head) a policy with `layers` and `heads` lists applies to.
struct HeadSelection {
  std::vector<bool> layers;
  std::vector<bool> heads;
  bool Has(int32_t l, int32_t h) const { return layers[l] && heads[h]; }
};

absl::StatusOr<HeadSelection> SelectHeads(const std::vector<uint32_t>& layers, const std::vector<uint32_t>& heads,
                                          const ModelConfig& c, absl::string_view policy) {
  HeadSelection s;
  ATTN_ASSIGN_OR_RETURN(s.layers, IndexMask(layers, c.n_layers, absl::StrCat(policy, ".layers"), "layer"));
  ATTN_ASSIGN_OR_RETURN(s.heads, IndexMask(heads, c.n_heads, absl::StrCat(policy, ".heads"), "head"));
  return s;
}

// The visible set of the sink policy.
absl::StatusOr<VisibleSet> PlanSink(const PolicySpec& spec, const ModelConfig& c) {
  const auto* s = std::get_if<StreamingSpec>(&spec.sink);
  if (s == nullptr) return VisibleSet{};
  if (s->window_tokens < 1) {
    return Invalid("streaming.window_tokens", absl::StrCat("must be >= 1 (got ", s->window_tokens, ")"));
  }
  // Past the model's context a longer window or sink changes nothing;
  // clamping makes such requests plan (and share prefix pages) alike.
  const auto clamp = [&](uint32_t v) { return static_cast<int32_t>(std::min<uint32_t>(v, c.context_length)); };
  return VisibleSet{clamp(s->sink_tokens.value_or(kDefaultStreamingSinkTokens)), clamp(s->window_tokens)};
}

absl::Status CheckVirtualSink(const VirtualSinkSpec& v, const ModelConfig& c) {
  ATTN_RETURN_IF_ERROR(CheckFinite(v.logit, "virtual_sink.logit"));
  if (v.per_head_logits.empty()) return absl::OkStatus();
  ATTN_RETURN_IF_ERROR(CheckPerHeadCount(v.per_head_logits.size(), c, "virtual_sink.per_head_logits"));
  for (size_t i = 0; i < v.per_head_logits.size(); ++i) {
    ATTN_RETURN_IF_ERROR(CheckFinite(v.per_head_logits[i], Indexed("virtual_sink.per_head_logits", i)));
  }
  return absl::OkStatus();
}

// ACT's heads: by default layers 2 .. n_layers - 2 (the reference code's
// range(2, 31) for 32 layers), every head.
absl::StatusOr<HeadSelection> PlanAct(const ActSpec& a, const ModelConfig& c) {
  if (a.beta) ATTN_RETURN_IF_ERROR(CheckFraction(*a.beta, "act.beta", /*one_allowed=*/true));
  if (a.tau) ATTN_RETURN_IF_ERROR(CheckFraction(*a.tau, "act.tau", /*one_allowed=*/false));
  ATTN_ASSIGN_OR_RETURN(HeadSelection s, SelectHeads(a.layers, a.heads, c, "act"));
  if (a.layers.empty()) {
    for (int32_t l = 0; l < c.n_layers; ++l) s.layers[l] = l >= 2 && l <= c.n_layers - 2;
  }
  return s;
}

absl::Status CheckTemperature(const TemperatureSpec& t, const ModelConfig& c) {
  ATTN_RETURN_IF_ERROR(CheckPerHeadCount(t.factors.size(), c, "temperature.factors"));
  for (size_t i = 0; i < t.factors.size(); ++i) {
    ATTN_RETURN_IF_ERROR(CheckPositive(t.factors[i], Indexed("temperature.factors", i)));
  }
  return absl::OkStatus();
}

// The tokens [first, last] whose bytes overlap [begin, end) of the text.
absl::StatusOr<KeyRange> TokensOverlapping(const PromptInfo& prompt, uint32_t begin, uint32_t end,
                                           absl::string_view field) {
  int32_t first = -1, last = -1;
  for (int32_t t = 0; t < prompt.num_tokens; ++t) {
    const TokenOffset& o = prompt.token_offsets[t];
    if (o.begin >= o.end || o.end <= static_cast<int64_t>(begin) || o.begin >= static_cast<int64_t>(end)) continue;
    if (first < 0) first = t;
    last = t;
  }
  if (first < 0) return Invalid(field, absl::StrCat("[", begin, ", ", end, ") covers no token of the prompt"));
  return KeyRange{first, last + 1};
}

// Emphasis spans as sorted, disjoint token ranges inside the prompt.
absl::StatusOr<std::vector<KeyRange>> PlanSpans(const EmphasisSpec& e, const PromptInfo& prompt) {
  if (e.spans.empty()) return Invalid("emphasis.spans", "needs at least one span");
  if (e.spans.size() > kMaxEmphasisSpans) {
    return Invalid("emphasis.spans", absl::StrCat("at most ", kMaxEmphasisSpans, " spans (got ", e.spans.size(), ")"));
  }
  std::vector<KeyRange> ranges;
  for (size_t i = 0; i < e.spans.size(); ++i) {
    const SpanSpec& s = e.spans[i];
    const std::string field = Indexed("emphasis.spans", i);
    const std::string range = absl::StrCat("[", s.begin, ", ", s.end, ")");
    if (s.begin >= s.end) return Invalid(field, absl::StrCat(range, " is empty"));
    if (s.unit == SpanUnit::kTokens) {
      if (s.end > static_cast<uint32_t>(prompt.num_tokens)) {
        return Invalid(field, absl::StrCat(range, " is outside the prompt's ", prompt.num_tokens, " tokens"));
      }
      ranges.push_back({static_cast<int32_t>(s.begin), static_cast<int32_t>(s.end)});
      continue;
    }
    if (!prompt.is_text) return Invalid(absl::StrCat(field, ".unit"), "CHARS needs a text prompt");
    if (s.end > prompt.text_bytes) {
      return Invalid(field, absl::StrCat(range, " is outside the prompt's ", prompt.text_bytes, " bytes"));
    }
    ATTN_ASSIGN_OR_RETURN(const KeyRange tokens, TokensOverlapping(prompt, s.begin, s.end, field));
    ranges.push_back(tokens);
  }
  std::sort(ranges.begin(), ranges.end(), [](const KeyRange& a, const KeyRange& b) { return a.begin < b.begin; });
  std::vector<KeyRange> merged;
  for (const KeyRange& r : ranges) {
    if (!merged.empty() && r.begin <= merged.back().end) {
      merged.back().end = std::max(merged.back().end, r.end);
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

absl::Status CheckDuo(const DuoSpec& d, const ModelConfig& c, bool has_profile) {
  for (size_t i = 0; i < d.retrieval_heads.size(); ++i) {
    const std::string field = Indexed("duo.retrieval_heads", i);
    const HeadRefSpec& h = d.retrieval_heads[i];
    if (h.layer >= static_cast<uint32_t>(c.n_layers)) {
      return Invalid(absl::StrCat(field, ".layer"),
                     absl::StrCat("layer ", h.layer, " is out of range [0, ", c.n_layers, ")"));
    }
    if (h.head >= static_cast<uint32_t>(c.n_heads)) {
      return Invalid(absl::StrCat(field, ".head"), absl::StrCat("head ", h.head, " is out of range [0, ", c.n_heads, ")"));
    }
  }
  if (d.retrieval_heads.empty() && !has_profile) {
    return Invalid("duo.retrieval_heads", "is empty and no profile names the retrieval heads");
  }
  if (d.recent_tokens && *d.recent_tokens < 1) {
    return Invalid("duo.recent_tokens", absl::StrCat("must be >= 1 (got ", *d.recent_tokens, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckMode(const PolicySpec& spec, const ModelConfig& c) {
  if (const auto* d = std::get_if<DuoSpec>(&spec.mode)) return CheckDuo(*d, c, !spec.profile.empty());
  if (const auto* s = std::get_if<SparseSpec>(&spec.mode)) {
    // Its bound by the KV page size is the Quest kernel's to check.
    if (s->token_budget < 1) {
      return Invalid("sparse.token_budget", absl::StrCat("must be >= 1 (got ", s->token_budget, ")"));
    }
    if (s->dense_layers && *s->dense_layers > static_cast<uint32_t>(c.n_layers)) {
      return Invalid("sparse.dense_layers",
                     absl::StrCat("must be <= n_layers ", c.n_layers, " (got ", *s->dense_layers, ")"));
    }
  }
  if (const auto* l = std::get_if<LinearSpec>(&spec.mode)) {
    if (l->window_tokens < 1) {
      return Invalid("linear.window_tokens", absl::StrCat("must be >= 1 (got ", l->window_tokens, ")"));
    }
  }
  return absl::OkStatus();
}

// DESIGN.md §4: combinations that make no sense.
absl::Status CheckCombinations(const PolicySpec& spec) {
  const auto* streaming = std::get_if<StreamingSpec>(&spec.sink);
  const bool linear = std::holds_alternative<LinearSpec>(spec.mode);
  if (spec.act && linear) {
    return Invalid("act", "cannot be combined with attention.linear: ACT reweights exact softmax probabilities");
  }
  if (streaming == nullptr) return absl::OkStatus();
  if (std::holds_alternative<SparseSpec>(spec.mode) && streaming->positions == StreamingPositions::kCache) {
    return Invalid("sparse",
                   "cannot be combined with attention.streaming positions CACHE: Quest bounds pages of keys at "
                   "their original positions");
  }
  if (linear) return Invalid("linear", "cannot be combined with attention.streaming: linear keeps its own sinks and window");
  if (std::holds_alternative<DuoSpec>(spec.mode)) {
    return Invalid("duo", "cannot be combined with attention.streaming: retrieval heads see every token");
  }
  return absl::OkStatus();
}

// The linear mode folds keys without their logit biases: those that could
// bias a folded key (emphasis; zero_tuning without a sink to keep token 0
// exact) are not built with it.
absl::Status CheckImplemented(const PolicySpec& spec) {
  const auto* linear = std::get_if<LinearSpec>(&spec.mode);
  if (linear == nullptr) return absl::OkStatus();
  if (spec.emphasis) return Unimplemented("linear", "not implemented with attention.emphasis");
  if (spec.zero_tuning && linear->sink_tokens == 0) {
    return Unimplemented("linear", "not implemented with attention.zero_tuning unless sink_tokens >= 1");
  }
  return absl::OkStatus();
}

PolicyLabels LabelsOf(const PolicySpec& spec) {
  static constexpr const char* kModes[] = {"dense", "duo", "sparse", "linear"};
  PolicyLabels labels;
  labels.mode = kModes[spec.mode.index()];
  const bool streaming = std::holds_alternative<StreamingSpec>(spec.sink);
  if (streaming && spec.virtual_sink) {
    labels.sink = "streaming+virtual_sink";
  } else if (streaming || spec.virtual_sink) {
    labels.sink = streaming ? "streaming" : "virtual_sink";
  }
  std::vector<absl::string_view> calibrations;
  if (spec.act) calibrations.push_back("act");
  if (spec.zero_tuning) calibrations.push_back("zero_tuning");
  if (spec.temperature) calibrations.push_back("temperature");
  if (spec.emphasis) calibrations.push_back("emphasis");
  if (!calibrations.empty()) labels.calibration = absl::StrJoin(calibrations, "+");
  return labels;
}

}  // namespace

absl::StatusOr<PolicySpec> ResolveProfile(const PolicySpec& spec, const HeadProfiles* profiles) {
  if (spec.profile.empty()) return spec;
  const HeadProfile* profile = nullptr;
  if (profiles != nullptr) {
    if (const auto it = profiles->find(spec.profile); it != profiles->end()) profile = &it->second;
  }
  if (profile == nullptr) {
    std::vector<std::string> names;
    if (profiles != nullptr) {
      for (const auto& entry : *profiles) names.push_back(entry.first);
    }
    return Invalid("profile", absl::StrCat("unknown profile \"", absl::CEscape(spec.profile), "\" (loaded: ",
                                           names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
  }
  PolicySpec resolved = spec;
  auto* duo = std::get_if<DuoSpec>(&resolved.mode);
  if (duo != nullptr && duo->retrieval_heads.empty()) duo->retrieval_heads = profile->retrieval_heads;
  return resolved;
}

absl::StatusOr<std::shared_ptr<const AttentionPlan>> PlanAttention(const PolicySpec& requested,
                                                                   const ModelConfig& config, const PromptInfo& prompt,
                                                                   const HeadProfiles* profiles) {
  // An unknown profile is reported in proto order (the field is last).
  const absl::StatusOr<PolicySpec> resolved = ResolveProfile(requested, profiles);
  const PolicySpec& spec = resolved.ok() ? *resolved : requested;
  if (prompt.is_text && prompt.token_offsets.size() != static_cast<size_t>(prompt.num_tokens)) {
    return absl::InternalError("prompt: token offsets do not match its tokens");
  }
  // Values, field by field in proto order, then combinations, then what is
  // not implemented.
  ATTN_ASSIGN_OR_RETURN(const VisibleSet visible, PlanSink(spec, config));
  if (spec.virtual_sink) ATTN_RETURN_IF_ERROR(CheckVirtualSink(*spec.virtual_sink, config));
  HeadSelection act_heads, zero_tuning_heads, emphasis_heads;
  if (spec.act) {
    ATTN_ASSIGN_OR_RETURN(act_heads, PlanAct(*spec.act, config));
  }
  if (spec.zero_tuning) {
    ATTN_RETURN_IF_ERROR(CheckPositive(spec.zero_tuning->gamma, "zero_tuning.gamma"));
    ATTN_ASSIGN_OR_RETURN(zero_tuning_heads,
                          SelectHeads(spec.zero_tuning->layers, spec.zero_tuning->heads, config, "zero_tuning"));
  }
  if (spec.temperature) ATTN_RETURN_IF_ERROR(CheckTemperature(*spec.temperature, config));
  std::vector<KeyRange> spans;
  float alpha = kDefaultEmphasisAlpha;
  if (spec.emphasis) {
    ATTN_ASSIGN_OR_RETURN(spans, PlanSpans(*spec.emphasis, prompt));
    alpha = spec.emphasis->alpha.value_or(kDefaultEmphasisAlpha);
    ATTN_RETURN_IF_ERROR(CheckFraction(alpha, "emphasis.alpha", /*one_allowed=*/true));
    ATTN_ASSIGN_OR_RETURN(emphasis_heads,
                          SelectHeads(spec.emphasis->layers, spec.emphasis->heads, config, "emphasis"));
  }
  ATTN_RETURN_IF_ERROR(CheckMode(spec, config));
  ATTN_RETURN_IF_ERROR(resolved.status());
  ATTN_RETURN_IF_ERROR(CheckCombinations(spec));
  ATTN_RETURN_IF_ERROR(CheckImplemented(spec));

  AttentionPlanContents c;
  c.n_layers = config.n_layers;
  c.n_heads = config.n_heads;
  c.n_kv_heads = config.n_kv_heads;
  c.dense_head.logit_scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim));
  c.heads.assign(static_cast<size_t>(config.n_layers) * config.n_heads, c.dense_head);
  c.visible = visible;
  const auto* streaming = std::get_if<StreamingSpec>(&spec.sink);
  c.cache_positions = streaming != nullptr && streaming->positions == StreamingPositions::kCache;
  c.spans = std::move(spans);
  c.prompt_tokens = prompt.num_tokens;
  c.labels = LabelsOf(spec);
  const float act_beta = spec.act ? spec.act->beta.value_or(kDefaultActBeta) : 1.0f;
  if (spec.act) {
    c.act_tau = spec.act->tau.value_or(kDefaultActTau);
    c.act = act_beta != 1.0f;
  }
  std::vector<bool> duo_streaming;  // [l * n_heads + h]: a streaming head of duo
  const auto* duo = std::get_if<DuoSpec>(&spec.mode);
  if (duo != nullptr) {
    duo_streaming.assign(c.heads.size(), true);
    for (const HeadRefSpec& r : duo->retrieval_heads) duo_streaming[r.layer * config.n_heads + r.head] = false;
  }
  const auto clamp_to_context = [&](uint32_t v) {
    return static_cast<int32_t>(std::min<uint32_t>(v, config.context_length));
  };
  const int32_t duo_sinks = duo ? clamp_to_context(duo->sink_tokens.value_or(kDefaultDuoSinkTokens)) : 0;
  const int32_t duo_recent = duo ? clamp_to_context(duo->recent_tokens.value_or(kDefaultDuoRecentTokens)) : 0;
  if (const auto* linear = std::get_if<LinearSpec>(&spec.mode)) {
    c.linear = true;
    c.visible = {clamp_to_context(linear->sink_tokens), clamp_to_context(linear->window_tokens)};
  }
  if (const auto* sparse = std::get_if<SparseSpec>(&spec.mode)) {
    c.quest_token_budget = static_cast<int32_t>(std::min<uint32_t>(sparse->token_budget, config.context_length));
    c.quest_dense_layers = static_cast<int32_t>(sparse->dense_layers.value_or(kDefaultQuestDenseLayers));
  }
  const float first_token_bias = spec.zero_tuning ? static_cast<float>(std::log(double{spec.zero_tuning->gamma})) : 0.0f;
  const float outside_span_bias = static_cast<float>(std::log(double{alpha}));
  for (int32_t l = 0; l < config.n_layers; ++l) {
    for (int32_t h = 0; h < config.n_heads; ++h) {
      const size_t i = static_cast<size_t>(l) * config.n_heads + h;
      AttentionHeadParams& p = c.heads[i];
      if (spec.temperature) p.logit_scale = c.dense_head.logit_scale / spec.temperature->factors[i];
      if (spec.act && act_heads.Has(l, h)) p.reweight_beta = act_beta;
      if (duo != nullptr && duo_streaming[i]) {
        p.sink_tokens = duo_sinks;
        p.window_tokens = duo_recent;
      }
      if (spec.zero_tuning && zero_tuning_heads.Has(l, h)) p.first_token_bias = first_token_bias;
      if (spec.emphasis && emphasis_heads.Has(l, h)) p.outside_span_bias = outside_span_bias;
      if (spec.virtual_sink) {
        const std::vector<float>& per_head = spec.virtual_sink->per_head_logits;
        p.virtual_sink_logit = per_head.empty() ? spec.virtual_sink->logit : per_head[i];
      }
    }
  }
  return std::make_shared<const AttentionPlan>(std::move(c));
}

}  // namespace attnserve
