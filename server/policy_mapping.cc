#include "server/policy_mapping.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/policy/planner.h"
#include "google/protobuf/util/json_util.h"

namespace attnserve {
namespace {

absl::Status UnknownEnum(absl::string_view field, int value) {
  return absl::InvalidArgumentError(absl::StrCat("attention.", field, ": unknown value ", value));
}

std::vector<uint32_t> Indices(const google::protobuf::RepeatedField<uint32_t>& list) {
  return {list.begin(), list.end()};
}

absl::StatusOr<StreamingSpec> ToStreaming(const v1::Streaming& s) {
  StreamingSpec out;
  if (s.has_sink_tokens()) out.sink_tokens = s.sink_tokens();
  out.window_tokens = s.window_tokens();
  switch (s.positions()) {
    case v1::Streaming::POSITIONS_UNSPECIFIED:
    case v1::Streaming::CACHE:
      out.positions = StreamingPositions::kCache;
      break;
    case v1::Streaming::ORIGINAL:
      out.positions = StreamingPositions::kOriginal;
      break;
    default:
      return UnknownEnum("streaming.positions", s.positions());
  }
  return out;
}

absl::StatusOr<EmphasisSpec> ToEmphasis(const v1::Emphasis& e) {
  EmphasisSpec out;
  for (int i = 0; i < e.spans_size(); ++i) {
    const v1::Span& s = e.spans(i);
    SpanSpec span{s.begin(), s.end(), SpanUnit::kChars};
    switch (s.unit()) {
      case v1::Span::UNIT_UNSPECIFIED:
      case v1::Span::CHARS:
        break;
      case v1::Span::TOKENS:
        span.unit = SpanUnit::kTokens;
        break;
      default:
        return UnknownEnum(absl::StrCat("emphasis.spans[", i, "].unit"), s.unit());
    }
    out.spans.push_back(span);
  }
  if (e.has_alpha()) out.alpha = e.alpha();
  out.layers = Indices(e.layers());
  out.heads = Indices(e.heads());
  return out;
}

absl::StatusOr<SparseSpec> ToSparse(const v1::Sparse& s) {
  if (s.method() != v1::Sparse::METHOD_UNSPECIFIED && s.method() != v1::Sparse::QUEST) {
    return UnknownEnum("sparse.method", s.method());
  }
  SparseSpec out;
  out.token_budget = s.token_budget();
  if (s.has_dense_layers()) out.dense_layers = s.dense_layers();
  return out;
}

absl::StatusOr<LinearSpec> ToLinear(const v1::Linear& l) {
  if (l.feature_map() != v1::Linear::FEATURE_MAP_UNSPECIFIED && l.feature_map() != v1::Linear::TAYLOR2) {
    return UnknownEnum("linear.feature_map", l.feature_map());
  }
  return LinearSpec{l.window_tokens(), l.sink_tokens()};
}

DuoSpec ToDuo(const v1::Duo& d) {
  DuoSpec out;
  for (const v1::HeadRef& h : d.retrieval_heads()) out.retrieval_heads.push_back({h.layer(), h.head()});
  if (d.has_sink_tokens()) out.sink_tokens = d.sink_tokens();
  if (d.has_recent_tokens()) out.recent_tokens = d.recent_tokens();
  return out;
}

}  // namespace

absl::StatusOr<PolicySpec> ToPolicySpec(const v1::AttentionPolicy& p) {
  PolicySpec spec;
  if (p.has_streaming()) {
    ATTN_ASSIGN_OR_RETURN(spec.sink, ToStreaming(p.streaming()));
  }
  if (p.has_virtual_sink()) {
    spec.virtual_sink = VirtualSinkSpec{p.virtual_sink().logit(),
                                        {p.virtual_sink().per_head_logits().begin(), p.virtual_sink().per_head_logits().end()}};
  }
  if (p.has_act()) {
    const v1::Act& a = p.act();
    spec.act = ActSpec{};
    if (a.has_beta()) spec.act->beta = a.beta();
    if (a.has_tau()) spec.act->tau = a.tau();
    spec.act->layers = Indices(a.layers());
    spec.act->heads = Indices(a.heads());
  }
  if (p.has_zero_tuning()) {
    const v1::ZeroTuning& z = p.zero_tuning();
    spec.zero_tuning = ZeroTuningSpec{z.gamma(), Indices(z.layers()), Indices(z.heads())};
  }
  if (p.has_temperature()) {
    spec.temperature = TemperatureSpec{{p.temperature().factors().begin(), p.temperature().factors().end()}};
  }
  if (p.has_emphasis()) {
    ATTN_ASSIGN_OR_RETURN(spec.emphasis, ToEmphasis(p.emphasis()));
  }
  switch (p.mode_case()) {
    case v1::AttentionPolicy::kDuo:
      spec.mode = ToDuo(p.duo());
      break;
    case v1::AttentionPolicy::kSparse: {
      ATTN_ASSIGN_OR_RETURN(spec.mode, ToSparse(p.sparse()));
      break;
    }
    case v1::AttentionPolicy::kLinear: {
      ATTN_ASSIGN_OR_RETURN(spec.mode, ToLinear(p.linear()));
      break;
    }
    case v1::AttentionPolicy::kDense:
    case v1::AttentionPolicy::MODE_NOT_SET:
      break;
  }
  spec.profile = p.profile();
  return spec;
}

absl::StatusOr<v1::AttentionPolicy> ParseAttentionPolicyJson(absl::string_view json) {
  v1::AttentionPolicy policy;
  const auto status = google::protobuf::util::JsonStringToMessage(std::string(json), &policy);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an AttentionPolicy in JSON: ", std::string(status.message().data(), status.message().size())));
  }
  return policy;
}

std::string AttentionPolicyJson(const v1::AttentionPolicy& policy) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  // Printing a valid message cannot fail.
  (void)google::protobuf::util::MessageToJsonString(policy, &json, options);
  return json;
}

absl::Status CheckDefaultAttention(const v1::AttentionPolicy& policy, const ModelConfig& config,
                                   const HeadProfiles& profiles) {
  ATTN_ASSIGN_OR_RETURN(const PolicySpec spec, ToPolicySpec(policy));
  if (spec.emphasis) {
    return absl::InvalidArgumentError("attention.emphasis: spans point into one prompt; a default cannot have them");
  }
  // Nothing else depends on the prompt.
  PromptInfo any_prompt;
  any_prompt.num_tokens = 1;
  return PlanAttention(spec, config, any_prompt, &profiles).status();
}

}  // namespace attnserve
