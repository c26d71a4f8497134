// Attention policies through the gRPC server, in process on 127.0.0.1:0 with
// the real default model: mapping, validation named by field, UNIMPLEMENTED
// for what is not built, prefix sharing, the server's default policy.
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attnserve/v1/generation.grpc.pb.h"
#include "engine/model/model.h"
#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "server/policy_mapping.h"
#include "server/server.h"
#include "tests/unit/engine_test_util.h"
#include "tests/unit/live_server.h"

namespace attnserve {
namespace {

using PolicyEdit = std::function<void(v1::AttentionPolicy&)>;

// With an edit, the request carries a policy; without, none (the server's default).
v1::GenerateRequest Greedy(const std::string& prompt, uint32_t max_tokens, const PolicyEdit& edit = nullptr) {
  v1::GenerateRequest r = attnserve::Greedy(prompt, max_tokens);
  if (edit) edit(*r.mutable_attention());
  return r;
}

void StreamingOriginal(v1::AttentionPolicy& p, uint32_t window) {
  p.mutable_streaming()->set_window_tokens(window);
  p.mutable_streaming()->set_positions(v1::Streaming::ORIGINAL);
}

class ServerPolicyTest : public LiveServerTest {
 protected:
  static grpc::Status Score(const v1::ScoreRequest& request, v1::ScoreResponse* response) {
    grpc::ClientContext context;
    return stub_->Score(&context, request, response);
  }

};

TEST_F(ServerPolicyTest, ImplementedPoliciesRunAndChangeTheOutput) {
  const std::string prompt = "The history of the printing press begins in the fifteenth century, when";
  const std::vector<std::pair<std::string, PolicyEdit>> cases = {
      {"streaming", [](auto& p) { StreamingOriginal(p, 8); }},
      {"virtual_sink", [](auto& p) { p.mutable_virtual_sink()->set_logit(2.0f); }},
      {"zero_tuning", [](auto& p) { p.mutable_zero_tuning()->set_gamma(0.1f); }},
      {"temperature", [](auto& p) {
         for (int i = 0; i < 270; ++i) p.mutable_temperature()->add_factors(0.7f);
       }},
      {"emphasis chars", [](auto& p) {
         v1::Span* s = p.mutable_emphasis()->add_spans();
         s->set_begin(4);
         s->set_end(30);
       }},
      {"emphasis tokens", [](auto& p) {
         v1::Span* s = p.mutable_emphasis()->add_spans();
         s->set_begin(2);
         s->set_end(5);
         s->set_unit(v1::Span::TOKENS);
         p.mutable_emphasis()->set_alpha(0.001f);
       }},
      {"all at once", [](auto& p) {
         StreamingOriginal(p, 12);
         p.mutable_virtual_sink();
         p.mutable_zero_tuning()->set_gamma(4.0f);
         p.mutable_zero_tuning()->add_layers(1);
         p.mutable_emphasis()->add_spans()->set_end(10);
         p.mutable_dense();
       }},
  };
  const Stream dense = Generate(*stub_, Greedy(prompt, 12));
  ASSERT_TRUE(dense.status.ok()) << dense.status.error_message();
  int differ = 0;
  for (const auto& [name, edit] : cases) {
    const Stream s = Generate(*stub_, Greedy(prompt, 12, edit));
    ASSERT_TRUE(s.status.ok()) << name << ": " << s.status.error_message();
    EXPECT_EQ(s.TokenIds().size(), 12u) << name;
    differ += s.TokenIds() != dense.TokenIds() ? 1 : 0;
  }
  EXPECT_GE(differ, 5);
  // Explicit dense and full cache are the default.
  const Stream explicit_dense = Generate(*stub_, Greedy(prompt, 12, [](auto& p) {
    p.mutable_dense();
    p.mutable_full();
  }));
  EXPECT_EQ(explicit_dense.TokenIds(), dense.TokenIds());
}

TEST_F(ServerPolicyTest, UnbuiltCombinationsAreUnimplemented) {
  const std::vector<std::pair<std::string, PolicyEdit>> cases = {
      {"attention.linear: not implemented with attention.emphasis", [](auto& p) {
         p.mutable_linear()->set_window_tokens(64);
         auto* span = p.mutable_emphasis()->add_spans();
         span->set_end(1);
         span->set_unit(v1::Span::TOKENS);
       }},
  };
  for (const auto& [message, edit] : cases) {
    const Stream s = Generate(*stub_, Greedy("Hello", 2, edit));
    EXPECT_EQ(s.status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << message;
    EXPECT_EQ(s.status.error_message(), message);
    EXPECT_TRUE(s.TokenIds().empty());
  }
  v1::ScoreRequest score;
  score.set_text("Hello there");
  score.mutable_attention()->mutable_linear()->set_window_tokens(64);
  score.mutable_attention()->mutable_zero_tuning()->set_gamma(2.0f);
  v1::ScoreResponse unused;
  const grpc::Status s = Score(score, &unused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(s.error_message(), "attention.linear: not implemented with attention.zero_tuning unless sink_tokens >= 1");
}

TEST_F(ServerPolicyTest, EveryInvalidPolicyIsRejectedByName) {
  const auto chars_span = [](v1::AttentionPolicy& p) { p.mutable_emphasis()->add_spans()->set_end(3); };
  const std::vector<std::pair<std::string, PolicyEdit>> cases = {
      {"attention.streaming.window_tokens", [](auto& p) { p.mutable_streaming(); }},
      {"attention.streaming.positions", [](auto& p) {
         p.mutable_streaming()->set_window_tokens(8);
         p.mutable_streaming()->set_positions(static_cast<v1::Streaming::Positions>(7));
       }},
      {"attention.virtual_sink.per_head_logits", [](auto& p) { p.mutable_virtual_sink()->add_per_head_logits(1); }},
      {"attention.act.beta", [](auto& p) { p.mutable_act()->set_beta(0.0f); }},
      {"attention.act.layers[0]", [](auto& p) { p.mutable_act()->add_layers(31); }},
      {"attention.zero_tuning.gamma", [](auto& p) { p.mutable_zero_tuning()->set_gamma(-1.0f); }},
      {"attention.zero_tuning.heads[0]", [](auto& p) {
         p.mutable_zero_tuning()->set_gamma(2.0f);
         p.mutable_zero_tuning()->add_heads(9);
       }},
      {"attention.temperature.factors", [](auto& p) { p.mutable_temperature()->add_factors(1.0f); }},
      {"attention.emphasis.spans", [](auto& p) { p.mutable_emphasis(); }},
      {"attention.emphasis.spans[0]", [](auto& p) {
         p.mutable_emphasis()->add_spans()->set_begin(40);
         p.mutable_emphasis()->mutable_spans(0)->set_end(20);
       }},
      {"attention.emphasis.spans[0]", [](auto& p) { p.mutable_emphasis()->add_spans()->set_end(1000); }},
      {"attention.emphasis.spans[0].unit", [](auto& p) {
         p.mutable_emphasis()->add_spans()->set_end(2);
         p.mutable_emphasis()->mutable_spans(0)->set_unit(static_cast<v1::Span::Unit>(9));
       }},
      {"attention.emphasis.alpha", [&](auto& p) {
         chars_span(p);
         p.mutable_emphasis()->set_alpha(1.5f);
       }},
      {"attention.duo.retrieval_heads", [](auto& p) { p.mutable_duo(); }},
      {"attention.sparse.method", [](auto& p) {
         p.mutable_sparse()->set_token_budget(64);
         p.mutable_sparse()->set_method(static_cast<v1::Sparse::Method>(3));
       }},
      {"attention.act", [](auto& p) {
         p.mutable_act();
         p.mutable_linear()->set_window_tokens(64);
       }},
      {"attention.sparse", [](auto& p) {
         p.mutable_streaming()->set_window_tokens(64);
         p.mutable_streaming()->set_positions(v1::Streaming::CACHE);
         p.mutable_sparse()->set_token_budget(64);
       }},
      {"attention.linear", [](auto& p) {
         StreamingOriginal(p, 64);
         p.mutable_linear()->set_window_tokens(64);
       }},
  };
  for (const auto& [field, edit] : cases) {
    const Stream s = Generate(*stub_, Greedy("Hello world, how are you?", 2, edit));
    EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field << ": " << s.status.error_message();
    EXPECT_EQ(s.status.error_message().rfind(field + ":", 0), 0u) << field << ": " << s.status.error_message();
    EXPECT_TRUE(s.TokenIds().empty());
  }

  // CHARS spans need text: not chat messages, not token ids.
  v1::GenerateRequest chat = Greedy("", 2, chars_span);
  chat.mutable_messages()->add_messages()->set_role("user");
  chat.mutable_messages()->mutable_messages(0)->set_content("Hello world");
  v1::GenerateRequest ids = Greedy("", 2, chars_span);
  for (int i = 1; i < 8; ++i) ids.mutable_prompt_token_ids()->add_ids(i);
  for (const v1::GenerateRequest& r : {chat, ids}) {
    const Stream s = Generate(*stub_, r);
    EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.status.error_message(), "attention.emphasis.spans[0].unit: CHARS needs a text prompt");
  }
  v1::ScoreRequest score;
  for (int i = 1; i < 8; ++i) score.mutable_token_ids()->add_ids(i);
  chars_span(*score.mutable_attention());
  v1::ScoreResponse unused;
  EXPECT_EQ(Score(score, &unused).error_message(), "attention.emphasis.spans[0].unit: CHARS needs a text prompt");
  // ... while TOKENS spans work for them.
  ids.mutable_attention()->mutable_emphasis()->mutable_spans(0)->set_unit(v1::Span::TOKENS);
  EXPECT_TRUE(Generate(*stub_, ids).status.ok());
}

TEST_F(ServerPolicyTest, ScoreAppliesThePolicy) {
  v1::ScoreRequest request;
  request.set_text(
      "The committee met on Tuesday to review the budget. After a long discussion, the members agreed to "
      "postpone the vote until the next meeting, when the final figures would be available.");
  v1::ScoreResponse dense, streaming, emphasis;
  ASSERT_TRUE(Score(request, &dense).ok());
  StreamingOriginal(*request.mutable_attention(), 8);
  ASSERT_TRUE(Score(request, &streaming).ok());
  request.clear_attention();
  v1::Span* span = request.mutable_attention()->mutable_emphasis()->add_spans();
  span->set_begin(4);
  span->set_end(13);
  ASSERT_TRUE(Score(request, &emphasis).ok());
  EXPECT_NE(streaming.perplexity(), dense.perplexity());
  EXPECT_NE(emphasis.perplexity(), dense.perplexity());
  EXPECT_EQ(streaming.token_ids_size(), dense.token_ids_size());
}

TEST_F(ServerPolicyTest, PrefixCacheIsSharedByEqualPoliciesOnly) {
  const std::string prompt =
      "<|im_start|>system\nYou answer questions about geography in one short sentence.<|im_end|>\n"
      "<|im_start|>user\nWhich ocean lies between Africa and Australia?<|im_end|>\n<|im_start|>assistant\n";
  const PolicyEdit gamma2 = [](auto& p) { p.mutable_zero_tuning()->set_gamma(2.0f); };
  const PolicyEdit gamma2_layers = [](auto& p) {
    p.mutable_zero_tuning()->set_gamma(2.0f);
    for (uint32_t l = 0; l < 30; ++l) p.mutable_zero_tuning()->add_layers(l);  // = the default
  };
  const PolicyEdit window = [](auto& p) { StreamingOriginal(p, 16); };
  const Stream first = Generate(*stub_, Greedy(prompt, 3, gamma2));
  const Stream again = Generate(*stub_, Greedy(prompt, 3, gamma2_layers));
  const Stream other = Generate(*stub_, Greedy(prompt, 3, window));
  ASSERT_TRUE(first.status.ok() && again.status.ok() && other.status.ok());
  EXPECT_EQ(first.CachedPromptTokens(), 0u);
  EXPECT_GT(again.CachedPromptTokens(), 0u);
  EXPECT_EQ(again.TokenIds(), first.TokenIds());
  EXPECT_EQ(other.CachedPromptTokens(), 0u);
}

TEST_F(ServerPolicyTest, ModelInfoListsWhatIsImplemented) {
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&context, {}, &info).ok());
  std::map<std::string, bool> implemented;
  for (const auto& p : info.policies()) implemented[p.name()] = p.implemented();
  for (const char* name : {"full", "dense", "streaming", "virtual_sink", "act", "zero_tuning", "temperature",
                           "emphasis", "duo", "sparse.quest", "linear", "profile"}) {
    EXPECT_TRUE(implemented.at(name)) << name;
  }
  EXPECT_EQ(info.profiles_size(), 0);
}

// A profile of the served model's shape whose retrieval heads are head 0 of
// every layer.
HeadProfile ProfileOf(const ModelConfig& c) {
  HeadProfile p;
  p.n_layers = c.n_layers;
  p.n_heads = c.n_heads;
  p.n_kv_heads = c.n_kv_heads;
  p.head_dim = c.head_dim;
  p.heads.resize(static_cast<size_t>(c.n_layers) * c.n_heads);
  for (int32_t l = 0; l < c.n_layers; ++l) p.retrieval_heads.push_back({static_cast<uint32_t>(l), 0});
  return p;
}

TEST_F(ServerPolicyTest, PoliciesNameTheLoadedProfiles) {
  ServerOptions options = LoopbackOptions();
  options.profiles["smol"] = ProfileOf(model_->config);
  options.profiles["other"] = ProfileOf(model_->config);
  std::unique_ptr<Server> server = Server::Start(*engine_, nullptr, options).value();
  std::unique_ptr<v1::Generation::Stub> stub = NewStub(server->port());

  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&context, {}, &info).ok());
  EXPECT_EQ(std::vector<std::string>(info.profiles().begin(), info.profiles().end()),
            (std::vector<std::string>{"other", "smol"}));

  const std::string prompt = "Long ago, people told stories that";
  const Stream named = Generate(*stub, Greedy(prompt, 6, [](auto& p) { p.set_profile("smol"); }));
  ASSERT_TRUE(named.status.ok()) << named.status.error_message();
  EXPECT_EQ(named.TokenIds(), Generate(*stub, Greedy(prompt, 6)).TokenIds());
  const Stream unknown = Generate(*stub, Greedy(prompt, 6, [](auto& p) { p.set_profile("smoll"); }));
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(unknown.status.error_message(), "attention.profile: unknown profile \"smoll\" (loaded: other, smol)");
  // Duo takes its retrieval heads from the profile: as if it listed them.
  const auto small_duo = [](v1::AttentionPolicy& p) {
    p.mutable_duo()->set_sink_tokens(1);
    p.mutable_duo()->set_recent_tokens(2);
  };
  const Stream duo = Generate(*stub, Greedy(prompt, 6, [&](auto& p) {
    p.set_profile("smol");
    small_duo(p);
  }));
  const Stream listed = Generate(*stub, Greedy(prompt, 6, [&](auto& p) {
    small_duo(p);
    for (int l = 0; l < model_->config.n_layers; ++l) p.mutable_duo()->add_retrieval_heads()->set_layer(l);
  }));
  const Stream dense = Generate(*stub, Greedy(prompt, 6));
  ASSERT_TRUE(duo.status.ok()) << duo.status.error_message();
  EXPECT_EQ(duo.TokenIds(), listed.TokenIds());
  EXPECT_NE(duo.TokenIds(), dense.TokenIds());
  // Without profiles the same name is unknown.
  const Stream none = Generate(*stub_, Greedy(prompt, 6, [](auto& p) { p.set_profile("smol"); }));
  EXPECT_EQ(none.status.error_message(), "attention.profile: unknown profile \"smol\" (loaded: none)");
}

TEST_F(ServerPolicyTest, ProfilesOfAnotherModelOrUnknownDefaultsFailAtStart) {
  ServerOptions options = LoopbackOptions();
  HeadProfile wrong = ProfileOf(model_->config);
  wrong.n_layers = 2;
  options.profiles["wrong"] = wrong;
  EXPECT_EQ(Server::Start(*engine_, nullptr, options).status().message(),
            "profile wrong: model.n_layers: the profile was made for 2, the served model has 30");
  options.profiles.clear();
  options.default_attention.set_profile("smol");
  EXPECT_EQ(Server::Start(*engine_, nullptr, options).status().message(),
            "--default-attention: attention.profile: unknown profile \"smol\" (loaded: none)");
}

TEST_F(ServerPolicyTest, DefaultAttentionServesRequestsWithoutAPolicy) {
  const v1::AttentionPolicy policy =
      ParseAttentionPolicyJson(R"({"streaming": {"sink_tokens": 1, "window_tokens": 4, "positions": "ORIGINAL"}})")
          .value();
  ServerOptions options = LoopbackOptions();
  options.default_attention = policy;
  std::unique_ptr<Server> server = Server::Start(*engine_, nullptr, options).value();
  std::unique_ptr<v1::Generation::Stub> stub = NewStub(server->port());

  grpc::ClientContext context;
  v1::ServerInfo info;
  ASSERT_TRUE(stub->GetServerInfo(&context, {}, &info).ok());
  EXPECT_EQ(info.default_attention_json(), R"({"streaming":{"sink_tokens":1,"window_tokens":4,"positions":"ORIGINAL"}})");

  // Shorter than a KV page: no run finds another's pages in the prefix cache.
  const std::string prompt = "Long ago, people told stories that";
  const Stream by_default = Generate(*stub, Greedy(prompt, 10));
  const Stream explicit_streaming = Generate(*stub_, Greedy(prompt, 10, [](auto& p) {
    StreamingOriginal(p, 4);
    p.mutable_streaming()->set_sink_tokens(1);
  }));
  const Stream dense = Generate(*stub_, Greedy(prompt, 10));
  // A present policy replaces the default: {} is dense over the full cache.
  const Stream opted_out = Generate(*stub, Greedy(prompt, 10, [](auto&) {}));
  ASSERT_TRUE(by_default.status.ok()) << by_default.status.error_message();
  EXPECT_EQ(by_default.TokenIds(), explicit_streaming.TokenIds());
  EXPECT_NE(by_default.TokenIds(), dense.TokenIds());
  EXPECT_EQ(opted_out.TokenIds(), dense.TokenIds());

  grpc::ClientContext c2;
  ASSERT_TRUE(stub_->GetServerInfo(&c2, {}, &info).ok());
  EXPECT_EQ(info.default_attention_json(), "{}");
}

TEST_F(ServerPolicyTest, InvalidDefaultAttentionFailsAtStartNamingTheField) {
  absl::StatusOr<v1::AttentionPolicy> typo = ParseAttentionPolicyJson(R"({"streaming": {"windw_tokens": 8}})");
  EXPECT_EQ(typo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(typo.status().message().find("windw_tokens"), absl::string_view::npos) << typo.status();
  EXPECT_FALSE(ParseAttentionPolicyJson("{streaming").ok());

  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"zero_tuning": {"gamma": -1}})", "--default-attention: attention.zero_tuning.gamma: must be > 0 (got -1)"},
      {R"({"linear": {"window_tokens": 64}, "zero_tuning": {"gamma": 2}})",
       "--default-attention: attention.linear: not implemented with attention.zero_tuning unless sink_tokens >= 1"},
      {R"({"emphasis": {"spans": [{"begin": 0, "end": 4}]}})",
       "--default-attention: attention.emphasis: spans point into one prompt; a default cannot have them"},
  };
  for (const auto& [json, message] : cases) {
    ServerOptions options = LoopbackOptions();
    options.default_attention = ParseAttentionPolicyJson(json).value();
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(*engine_, nullptr, options);
    ASSERT_FALSE(server.ok()) << json;
    EXPECT_EQ(server.status().message(), message);
  }
}

}  // namespace
}  // namespace attnserve
