// The server over a backend that fails for good (a GPU fault): the call in
// flight fails, the server's owner hears of it once (`serve` exits then),
// and calls after it get UNAVAILABLE with why.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/core/engine.h"
#include "engine/model/model.h"
#include "server/server.h"
#include "tests/unit/failing_backend.h"
#include "tests/unit/live_server.h"
#include "tests/unit/synthetic_model.h"

namespace attnserve {
namespace {

TEST(ServerHealthTest, ABackendThatFailsForGoodIsReportedToTheServersOwner) {
  const std::unique_ptr<Model> model =
      LoadSyntheticLlama("attnserve_server_health_test", [](const std::string& p) { return LoadModel(p); }).value();
  const std::unique_ptr<Engine> engine =
      Engine::CreateWithBackend(*model, EngineOptions{}, nullptr, FailingCpuBackend(/*fail_at=*/2)).value();
  std::mutex mu;
  std::condition_variable told;
  std::vector<absl::Status> heard;
  ServerOptions options = LoopbackOptions();
  options.on_backend_failure = [&](const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu);
    heard.push_back(status);
    told.notify_all();
  };
  const std::unique_ptr<Server> server = Server::Start(*engine, nullptr, options).value();
  const std::unique_ptr<v1::Generation::Stub> stub = NewStub(server->port());

  // Step 1 (the prefill) runs, step 2 fails.
  const Stream failed = Generate(*stub, Greedy("The device", 8));
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::INTERNAL) << failed.status.error_message();
  EXPECT_FALSE(failed.messages.empty());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(told.wait_for(lock, std::chrono::seconds(30), [&] { return !heard.empty(); }));
    EXPECT_EQ(heard[0].code(), absl::StatusCode::kUnavailable) << heard[0];
  }
  const Stream refused = Generate(*stub, Greedy("The device", 8));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(refused.status.error_message().find("no more steps"), std::string::npos) << refused.status.error_message();
  server->Drain(absl::ZeroDuration());
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(heard.size(), 1u);
}

}  // namespace
}  // namespace attnserve
