#include "server/generation_service.h"

#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/generate_reactor.h"
#include "server/grpc_status.h"
#include "server/policy_mapping.h"
#include "server/request_mapping.h"

namespace attnserve {
namespace {

struct PolicyEntry {
  const char* name;
  bool implemented;
  bool experimental;
  const char* limits;
};

// Every policy of attention.proto; `implemented` flips as the policy
// layer and the kernels' hooks land.
constexpr PolicyEntry kPolicies[] = {
    {"full", true, false, "keeps every token up to the model's context"},
    {"dense", true, false, "reads every visible token"},
    {"streaming", true, false,
     "sink_tokens (default 4), window_tokens >= 1; positions CACHE (the default: RoPE positions inside the "
     "kept cache, runs past the model's context) or ORIGINAL (stops at the context)"},
    {"virtual_sink", true, false, "logit (default 0), or n_layers * n_heads per-head logits"},
    {"act", true, false,
     "beta in (0, 1] (0.4), tau in (0, 1) (0.1), layers (2 .. n_layers - 2), heads; the prompt is prefilled in "
     "one step and its pages are the request's own"},
    {"zero_tuning", true, false, "gamma > 0, layers (all), heads (all)"},
    {"temperature", true, false, "n_layers * n_heads factors > 0"},
    {"emphasis", true, false,
     "1 to 256 spans inside the prompt (CHARS need a text prompt, or TOKENS), alpha in (0, 1] (0.01), layers "
     "(all), heads (all)"},
    {"duo", true, false,
     "retrieval_heads (query heads), sink_tokens (64), recent_tokens (256); streaming heads' slices of pages are given back as their window moves"},
    {"sparse.quest", true, false, "token_budget >= page size, dense_layers (2)"},
    {"linear", true, true,
     "window_tokens, sink_tokens, feature_map taylor2; not with emphasis, nor zero_tuning without sinks"},
    {"profile", true, false, "a head profile made by `attnserve profile`, loaded with --profile-dir (see profiles)"},
};

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                                            const v1::GenerateRequest* request) {
  return StartGenerate(serving_, context, *request);
}

grpc::ServerUnaryReactor* GenerationService::Score(grpc::CallbackServerContext* context,
                                                   const v1::ScoreRequest* request, v1::ScoreResponse* response) {
  RequestRecord record;
  record.method = "Score";
  record.request_id = serving_.NewRequestId();
  const absl::Time arrival = absl::Now();
  absl::StatusOr<ScoreInput> input =
      serving_.draining.load() ? absl::UnavailableError("the server is draining")
                               : ToScoreInput(*request, serving_.engine.model(), serving_.default_attention,
                                              serving_.profiles);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (!input.ok()) {
    record.code = input.status().code();
    record.error = std::string(input.status().message());
    serving_.RecordFinished(record);
    reactor->Finish(ToGrpcStatus(input.status()));
    return reactor;
  }
  record.prompt_tokens = static_cast<int32_t>(input->token_ids.size());
  // Engine::Score blocks until the engine thread has computed it; a gRPC
  // callback thread must not block that long.
  serving_.BeginBackgroundCall();
  std::thread([this, reactor, response, arrival, record = std::move(record), input = *std::move(input),
               deadline = DeadlineOf(*context)]() mutable {
    absl::StatusOr<ScoreResult> result =
        serving_.engine.Score(std::move(input.token_ids), std::move(input.attention), deadline);
    if (result.ok()) {
      response->mutable_token_ids()->Add(result->token_ids.begin(), result->token_ids.end());
      response->mutable_token_logprobs()->Add(result->token_logprobs.begin(), result->token_logprobs.end());
      response->set_perplexity(result->perplexity);
    } else {
      record.code = result.status().code();
      record.error = std::string(result.status().message());
    }
    record.e2e_seconds = absl::ToDoubleSeconds(absl::Now() - arrival);
    serving_.RecordFinished(record);
    reactor->Finish(ToGrpcStatus(result.status()));
    serving_.EndBackgroundCall();
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const v1::TokenizeRequest* request,
                                                      v1::TokenizeResponse* response) {
  std::vector<TokenOffset> offsets;
  const std::vector<int32_t> ids = serving_.engine.model().tokenizer->EncodeWithOffsets(
      request->text(), request->add_special(), request->parse_special(), &offsets);
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  for (const TokenOffset& o : offsets) {
    response->add_offsets(static_cast<uint32_t>(o.begin));
    response->add_offsets(static_cast<uint32_t>(o.end));
  }
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(grpc::CallbackServerContext* context,
                                                        const v1::DetokenizeRequest* request,
                                                        v1::DetokenizeResponse* response) {
  const Model& model = serving_.engine.model();
  std::vector<int32_t> ids;
  ids.reserve(request->token_ids_size());
  for (int i = 0; i < request->token_ids_size(); ++i) {
    const uint32_t id = request->token_ids(i);
    if (id >= static_cast<uint32_t>(model.config.vocab_size)) {
      return FinishNow(context, absl::InvalidArgumentError(absl::StrCat("token_ids[", i, "]: token ", id,
                                                                        " is outside the vocabulary [0, ",
                                                                        model.config.vocab_size, ")")));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  response->set_text(ValidUtf8(model.tokenizer->Decode(ids)));
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetModelInfoRequest* request,
                                                          v1::ModelInfo* response) {
  const Engine& engine = serving_.engine;
  const ModelConfig& c = engine.model().config;
  response->set_name(c.name);
  response->set_architecture(c.architecture);
  response->set_n_layers(c.n_layers);
  response->set_n_heads(c.n_heads);
  response->set_n_kv_heads(c.n_kv_heads);
  response->set_head_dim(c.head_dim);
  response->set_hidden_size(c.hidden);
  response->set_vocab_size(c.vocab_size);
  response->set_context_length(c.context_length);
  response->set_backend(engine.backend_name());
  response->set_device(engine.device());
  for (const PolicyEntry& p : kPolicies) {
    v1::PolicySupport* s = response->add_policies();
    s->set_name(p.name);
    s->set_implemented(p.implemented);
    s->set_experimental(p.experimental);
    s->set_limits(p.limits);
  }
  response->set_kv_page_size(engine.options().page_size);
  response->set_kv_pages(engine.stats().kv_pages_total);
  for (const auto& entry : serving_.profiles) response->add_profiles(entry.first);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::GetServerInfo(grpc::CallbackServerContext* context,
                                                           const v1::GetServerInfoRequest* request,
                                                           v1::ServerInfo* response) {
  const EngineOptions& o = serving_.engine.options();
  response->set_version(kServerVersion);
  response->set_max_num_seqs(o.max_num_seqs);
  response->set_max_num_batched_tokens(o.max_num_batched_tokens);
  response->set_waiting_queue_limit(o.max_waiting);
  response->set_uptime_seconds(absl::ToDoubleSeconds(absl::Now() - serving_.started));
  response->set_default_attention_json(AttentionPolicyJson(serving_.default_attention));
  return FinishNow(context, absl::OkStatus());
}

}  // namespace attnserve
