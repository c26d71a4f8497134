// The gRPC server in process for the server tests: the default model behind
// an engine on 127.0.0.1:0, started once per suite, called through the
// generated C++ stub.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "attnserve/v1/generation.grpc.pb.h"
#include "engine/model/model.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/unit/engine_test_util.h"

namespace attnserve {

// An ephemeral loopback port, everything else default.
inline ServerOptions LoopbackOptions() {
  ServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  return options;
}

inline std::unique_ptr<v1::Generation::Stub> NewStub(int port) {
  return v1::Generation::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
}

// One Generate call: its messages and its status.
struct Stream {
  std::vector<v1::GenerateResponse> messages;
  grpc::Status status;

  std::vector<uint32_t> TokenIds() const {
    std::vector<uint32_t> ids;
    for (const auto& m : messages) ids.insert(ids.end(), m.token_ids().begin(), m.token_ids().end());
    return ids;
  }
  std::string Text() const {
    std::string text;
    for (const auto& m : messages) text += m.text();
    return text;
  }
  uint32_t CachedPromptTokens() const {
    return !messages.empty() && messages.back().finished() ? messages.back().usage().cached_prompt_tokens() : 0;
  }
};

inline Stream Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                       std::chrono::milliseconds timeout = std::chrono::minutes(5)) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  Stream out;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(&context, request);
  v1::GenerateResponse r;
  while (reader->Read(&r)) out.messages.push_back(r);
  out.status = reader->Finish();
  return out;
}

inline v1::GenerateRequest Greedy(const std::string& prompt, uint32_t max_tokens) {
  v1::GenerateRequest r;
  r.set_prompt(prompt);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_ignore_eos(true);
  return r;
}

// A suite's server: skipped, saying why, when the model is missing.
class LiveServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(ModelPath())) return;
    model_ = std::move(LoadModel(ModelPath())).value();
    engine_ = Engine::Create(*model_, EngineOptions{}, nullptr).value();
    server_ = Server::Start(*engine_, nullptr, LoopbackOptions()).value();
    stub_ = NewStub(server_->port());
  }
  static void TearDownTestSuite() {
    stub_.reset();
    server_.reset();
    engine_.reset();
    model_.reset();
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << ModelPath() << " is missing: run scripts/setup.sh";
  }

  static inline std::unique_ptr<Model> model_;
  static inline std::unique_ptr<Engine> engine_;
  static inline std::unique_ptr<Server> server_;
  static inline std::unique_ptr<v1::Generation::Stub> stub_;
};

}  // namespace attnserve
