// The gRPC server in process, on 127.0.0.1:0 with the real default model,
// called through the generated C++ stub.
#include "server/server.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "attnserve/v1/generation.grpc.pb.h"
#include "engine/model/model.h"
#include "engine/sampling/sampler.h"
#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "server/byte_size.h"
#include "server/request_mapping.h"
#include "tests/unit/live_server.h"
#include "tools/local_engine.h"

namespace attnserve {
namespace {

class ServerTest : public LiveServerTest {
 protected:
  // True once the engine holds no sequence and no page.
  static bool EngineIdle(const Engine& engine) {
    const absl::Time deadline = absl::Now() + absl::Seconds(15);
    for (;;) {
      const EngineStats s = engine.stats();
      if (s.running == 0 && s.waiting == 0 && s.kv_pages_used == 0) return true;
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

};

TEST_F(ServerTest, GreedyGenerateEqualsTheCliPathAndRepeats) {
  const std::string prompt = "The three primary colors are";
  constexpr int kTokens = 10;
  // What `attnserve generate` computes: one sequence, greedy, no scheduler.
  std::unique_ptr<LocalEngine> local = OpenLocalEngine(ModelPath(), 2).value();
  const std::vector<int32_t> prompt_ids = model_->tokenizer->Encode(prompt, true, true);
  PageTable table;
  std::vector<float> logits;
  ASSERT_TRUE(Prefill(*local, table, prompt_ids, LogitsWanted::kLast, logits).ok());
  std::vector<uint32_t> expected;
  for (int i = 0; i < kTokens; ++i) {
    const int32_t next = ArgMax(logits);
    expected.push_back(next);
    logits.clear();
    ASSERT_TRUE(Prefill(*local, table, std::vector<int32_t>{next}, LogitsWanted::kLast, logits).ok());
  }

  const Stream first = Generate(*stub_, Greedy(prompt, kTokens));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.TokenIds(), expected);
  const Stream second = Generate(*stub_, Greedy(prompt, kTokens));
  EXPECT_EQ(second.TokenIds(), first.TokenIds());
  EXPECT_EQ(second.Text(), first.Text());

  const v1::GenerateResponse& last = first.messages.back();
  EXPECT_TRUE(last.finished());
  EXPECT_EQ(last.finish_reason(), v1::LENGTH);
  EXPECT_EQ(last.usage().prompt_tokens(), prompt_ids.size());
  EXPECT_EQ(last.usage().completion_tokens(), static_cast<uint32_t>(kTokens));
  EXPECT_FALSE(last.request_id().empty());
  EXPECT_GT(last.metrics().time_to_first_token_seconds(), 0.0);
}

TEST_F(ServerTest, ChatMessagesAndTokenIdsAreInputsToo) {
  v1::GenerateRequest chat = Greedy("", 4);
  auto* m = chat.mutable_messages()->add_messages();
  m->set_role("user");
  m->set_content("Hi!");
  chat.set_request_id("my-request");
  const Stream s = Generate(*stub_, chat);
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.messages.back().request_id(), "my-request");
  EXPECT_EQ(s.TokenIds().size(), 4u);

  v1::GenerateRequest ids = Greedy("", 4);
  for (int32_t t : model_->tokenizer->Encode("The three primary colors are", true, true)) {
    ids.mutable_prompt_token_ids()->add_ids(t);
  }
  EXPECT_EQ(Generate(*stub_, ids).TokenIds(), Generate(*stub_, Greedy("The three primary colors are", 4)).TokenIds());
}

TEST_F(ServerTest, NCompletionsLogprobsAndSeeds) {
  v1::GenerateRequest r = Greedy("Once upon a time", 5);
  r.mutable_sampling()->set_n(3);
  r.mutable_sampling()->set_temperature(1.0f);
  r.mutable_sampling()->set_seed(7);
  r.mutable_sampling()->set_logprobs(true);
  r.mutable_sampling()->set_top_logprobs(2);
  const Stream a = Generate(*stub_, r);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  std::vector<std::vector<uint32_t>> tokens(3);
  int finished = 0;
  for (const auto& m : a.messages) {
    ASSERT_LT(m.index(), 3u);
    ASSERT_EQ(m.logprobs_size(), m.token_ids_size());
    for (const auto& l : m.logprobs()) EXPECT_EQ(l.top_logprobs_size(), 2);
    tokens[m.index()].insert(tokens[m.index()].end(), m.token_ids().begin(), m.token_ids().end());
    finished += m.finished();
  }
  EXPECT_EQ(finished, 3);
  for (const auto& t : tokens) EXPECT_EQ(t.size(), 5u);
  const Stream b = Generate(*stub_, r);  // same seed, same tokens
  std::vector<std::vector<uint32_t>> again(3);
  for (const auto& m : b.messages) again[m.index()].insert(again[m.index()].end(), m.token_ids().begin(), m.token_ids().end());
  EXPECT_EQ(again, tokens);
}

TEST_F(ServerTest, TokenizeDetokenizeRoundTrip) {
  const std::string text = "Héllo, wörld! 1234 <|im_start|> 🙂";
  grpc::ClientContext c1;
  v1::TokenizeRequest tr;
  tr.set_text(text);
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(stub_->Tokenize(&c1, tr, &tokens).ok());
  ASSERT_GT(tokens.token_ids_size(), 5);
  ASSERT_EQ(tokens.offsets_size(), 2 * tokens.token_ids_size());
  EXPECT_EQ(tokens.offsets(0), 0u);
  EXPECT_EQ(tokens.offsets(tokens.offsets_size() - 1), text.size());

  grpc::ClientContext c2;
  v1::DetokenizeRequest dr;
  *dr.mutable_token_ids() = tokens.token_ids();
  v1::DetokenizeResponse back;
  ASSERT_TRUE(stub_->Detokenize(&c2, dr, &back).ok());
  EXPECT_EQ(back.text(), text);

  grpc::ClientContext c3;
  dr.add_token_ids(1u << 20);
  const grpc::Status bad = stub_->Detokenize(&c3, dr, &back);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("token_ids["), std::string::npos) << bad.error_message();
}

TEST_F(ServerTest, EveryInvalidFieldIsRejectedByName) {
  using Edit = std::function<void(v1::GenerateRequest&)>;
  const int32_t context = model_->config.context_length;
  const std::vector<std::pair<std::string, Edit>> cases = {
      {"input", [](auto& r) { r.clear_prompt(); }},
      {"prompt", [](auto& r) { r.set_prompt(""); }},
      {"prompt_token_ids[1]", [](auto& r) {
         r.mutable_prompt_token_ids()->add_ids(1);
         r.mutable_prompt_token_ids()->add_ids(49152);
       }},
      {"prompt_token_ids", [&](auto& r) {
         for (int i = 0; i < context; ++i) r.mutable_prompt_token_ids()->add_ids(1);
       }},
      {"messages", [](auto& r) { r.mutable_messages(); }},
      {"messages[0].role", [](auto& r) { r.mutable_messages()->add_messages()->set_role("robot"); }},
      {"request_id", [](auto& r) { r.set_request_id(std::string(kMaxRequestIdBytes + 1, 'x')); }},
      {"priority", [](auto& r) { r.set_priority(kMaxPriority + 1); }},
      {"sampling.max_tokens", [&](auto& r) { r.mutable_sampling()->set_max_tokens(context); }},
      {"sampling.max_tokens", [](auto& r) { r.mutable_sampling()->set_max_tokens(0); }},
      {"sampling.min_tokens", [](auto& r) { r.mutable_sampling()->set_min_tokens(17); }},
      {"sampling.temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); }},
      {"sampling.top_k", [](auto& r) { r.mutable_sampling()->set_top_k(1u << 31); }},
      {"sampling.top_p", [](auto& r) { r.mutable_sampling()->set_top_p(0.0f); }},
      {"sampling.min_p", [](auto& r) { r.mutable_sampling()->set_min_p(1.5f); }},
      {"sampling.stop", [](auto& r) {
         for (int i = 0; i < 17; ++i) r.mutable_sampling()->add_stop("x");
       }},
      {"sampling.stop[0]", [](auto& r) { r.mutable_sampling()->add_stop(""); }},
      {"sampling.stop_token_ids[0]", [](auto& r) { r.mutable_sampling()->add_stop_token_ids(49152); }},
      {"sampling.repetition_penalty", [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0.0f); }},
      {"sampling.presence_penalty", [](auto& r) { r.mutable_sampling()->set_presence_penalty(2.5f); }},
      {"sampling.frequency_penalty", [](auto& r) { r.mutable_sampling()->set_frequency_penalty(-2.5f); }},
      {"sampling.logit_bias[5]", [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[5] = 101.0f; }},
      {"sampling.logit_bias", [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[49152] = 1.0f; }},
      {"sampling.top_logprobs", [](auto& r) { r.mutable_sampling()->set_top_logprobs(2); }},
      {"sampling.top_logprobs", [](auto& r) {
         r.mutable_sampling()->set_logprobs(true);
         r.mutable_sampling()->set_top_logprobs(21);
       }},
      {"sampling.n", [](auto& r) { r.mutable_sampling()->set_n(17); }},
  };
  for (const auto& [field, edit] : cases) {
    v1::GenerateRequest r = Greedy("Hello", 16);
    edit(r);
    const Stream s = Generate(*stub_, r);
    EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field << ": " << s.status.error_message();
    EXPECT_EQ(s.status.error_message().rfind(field + ":", 0), 0u) << field << ": " << s.status.error_message();
    EXPECT_TRUE(s.messages.empty());
  }
  EXPECT_TRUE(EngineIdle(*engine_));
}

TEST_F(ServerTest, CancelMidStreamFreesThePages) {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub_->Generate(&context, Greedy("Tell me a long story.", 4000));
  v1::GenerateResponse r;
  ASSERT_TRUE(reader->Read(&r));
  ASSERT_TRUE(reader->Read(&r));
  EXPECT_GT(engine_->stats().kv_pages_used, 0);
  context.TryCancel();
  while (reader->Read(&r)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(EngineIdle(*engine_));
}

TEST_F(ServerTest, ExpiredDeadlineFreesThePages) {
  const Stream s = Generate(*stub_, Greedy("Tell me a long story.", 4000), std::chrono::milliseconds(700));
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_FALSE(s.messages.empty());
  EXPECT_TRUE(EngineIdle(*engine_));
}

TEST_F(ServerTest, ThirtyTwoConcurrentStreamsFinishWithCorrectUsage) {
  constexpr int kStreams = 32;
  constexpr uint32_t kTokens = 6;
  std::vector<Stream> streams(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      streams[i] = Generate(*stub_, Greedy("Count from " + std::to_string(i) + " to " + std::to_string(i + 5), kTokens));
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    const Stream& s = streams[i];
    ASSERT_TRUE(s.status.ok()) << i << ": " << s.status.error_message();
    const v1::GenerateResponse& last = s.messages.back();
    EXPECT_EQ(last.finish_reason(), v1::LENGTH);
    EXPECT_EQ(last.usage().completion_tokens(), kTokens);
    EXPECT_EQ(s.TokenIds().size(), kTokens);
    const std::string prompt = "Count from " + std::to_string(i) + " to " + std::to_string(i + 5);
    EXPECT_EQ(last.usage().prompt_tokens(), model_->tokenizer->Encode(prompt, true, true).size());
  }
  EXPECT_TRUE(EngineIdle(*engine_));
}

TEST_F(ServerTest, ScoreAndModelInfo) {
  grpc::ClientContext c1;
  v1::ScoreRequest score;
  score.set_text("The quick brown fox jumps over the lazy dog.");
  v1::ScoreResponse scored;
  ASSERT_TRUE(stub_->Score(&c1, score, &scored).ok());
  ASSERT_GT(scored.token_ids_size(), 5);
  ASSERT_EQ(scored.token_logprobs_size(), scored.token_ids_size());
  EXPECT_EQ(scored.token_logprobs(0), 0.0f);
  EXPECT_GT(scored.perplexity(), 1.0);

  grpc::ClientContext c2;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&c2, {}, &info).ok());
  EXPECT_EQ(info.architecture(), "llama");
  EXPECT_EQ(info.n_layers(), 30u);
  EXPECT_EQ(info.vocab_size(), 49152u);
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_FALSE(info.device().empty());
  EXPECT_GT(info.kv_pages(), 0u);
  bool dense = false, linear_experimental = false;
  for (const auto& p : info.policies()) {
    dense |= p.name() == "dense" && p.implemented();
    linear_experimental |= p.name() == "linear" && p.implemented() && p.experimental();
  }
  EXPECT_TRUE(dense);
  EXPECT_TRUE(linear_experimental);

  grpc::ClientContext c3;
  v1::ServerInfo server_info;
  ASSERT_TRUE(stub_->GetServerInfo(&c3, {}, &server_info).ok());
  EXPECT_EQ(server_info.max_num_seqs(), 64u);
  EXPECT_GT(server_info.uptime_seconds(), 0.0);
}

TEST_F(ServerTest, DrainFinishesRunningStreamsAndRefusesNewOnes) {
  std::unique_ptr<Engine> engine = Engine::Create(*model_, EngineOptions{}, nullptr).value();
  std::unique_ptr<Server> server = Server::Start(*engine, nullptr, LoopbackOptions()).value();
  std::unique_ptr<v1::Generation::Stub> stub = NewStub(server->port());
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(&context, Greedy("Once upon a time", 40));
  v1::GenerateResponse r;
  ASSERT_TRUE(reader->Read(&r));
  uint32_t tokens = r.token_ids_size();
  std::thread drain([&] { server->Drain(absl::Seconds(60)); });
  // The running stream keeps the server up; new calls are refused meanwhile.
  grpc::StatusCode refused = grpc::StatusCode::OK;
  for (int i = 0; i < 100 && refused != grpc::StatusCode::UNAVAILABLE; ++i) {
    refused = Generate(*stub, Greedy("Hi", 1)).status.error_code();
  }
  EXPECT_EQ(refused, grpc::StatusCode::UNAVAILABLE);
  while (reader->Read(&r)) tokens += r.token_ids_size();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(r.finish_reason(), v1::LENGTH);
  EXPECT_EQ(tokens, 40u);
  drain.join();
}

TEST(ByteSizeTest, UnitsAndErrors) {
  EXPECT_EQ(ParseByteSize("256MiB").value(), 256ll << 20);
  EXPECT_EQ(ParseByteSize("256m").value(), 256ll << 20);
  EXPECT_EQ(ParseByteSize("1.5GiB").value(), 3ll << 29);
  EXPECT_EQ(ParseByteSize("512MB").value(), 512'000'000);
  EXPECT_EQ(ParseByteSize(" 1048576 ").value(), 1048576);
  EXPECT_EQ(ParseByteSize("4 kb").value(), 4000);
  for (const char* bad : {"", "MiB", "-1MiB", "12 parsecs", "1e3", "99999999TiB"}) {
    EXPECT_FALSE(ParseByteSize(bad).ok()) << bad;
  }
}

TEST(ValidUtf8Test, KeepsValidTextAndReplacesInvalidBytes) {
  EXPECT_EQ(ValidUtf8("plain ascii"), "plain ascii");
  EXPECT_EQ(ValidUtf8("h\xC3\xA9 \xF0\x9F\x99\x82"), "h\xC3\xA9 \xF0\x9F\x99\x82");
  EXPECT_EQ(ValidUtf8("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(ValidUtf8("\xC3"), "\xEF\xBF\xBD");                  // truncated
  EXPECT_EQ(ValidUtf8("\xC0\xAF"), "\xEF\xBF\xBD");              // overlong
  EXPECT_EQ(ValidUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD");          // surrogate
  EXPECT_EQ(ValidUtf8("\xE2\x82" "x"), "\xEF\xBF\xBD" "x");      // cut short by an ASCII byte
}

}  // namespace
}  // namespace attnserve
