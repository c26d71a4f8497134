// An engine whose backend fails for good (a GPU whose context a fault
// spoiled): the requests held fail, the engine turns unhealthy, new requests
// are refused with why, and the health listener hears it once.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/engine.h"
#include "engine/model/model.h"
#include "tests/unit/engine_test_util.h"
#include "tests/unit/failing_backend.h"
#include "tests/unit/synthetic_model.h"

namespace attnserve {
namespace {

TEST(EngineHealthTest, ABackendThatFailsForGoodFailsWhatItHoldsAndRefusesTheRest) {
  const std::unique_ptr<Model> model = LoadSyntheticLlama("attnserve_engine_health_test", [](const std::string& p) { return LoadModel(p); }).value();
  std::unique_ptr<Engine> engine =
      Engine::CreateWithBackend(*model, EngineOptions{}, nullptr, FailingCpuBackend(/*fail_at=*/6)).value();
  std::atomic<int> heard{0};
  engine->SetHealthListener([&](const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
    ++heard;
  });
  GenerationRequest r;
  r.prompt_ids = model->tokenizer->Encode("The device", true, true);
  r.sampling.max_tokens = 3;
  r.sampling.ignore_eos = true;
  // Steps 1-4: a prefill and two decodes, then the next request's prefill.
  EXPECT_EQ(RunAlone(*engine, r).size(), 3u);
  EXPECT_TRUE(engine->health().ok());
  r.sampling.max_tokens = 20;
  Collector a, b;
  ASSERT_TRUE(engine->Submit(r, a.stream).ok());
  ASSERT_TRUE(engine->Submit(r, b.stream).ok());
  for (Collector* c : {&a, &b}) {
    const GenerationDelta out = c->Wait()[0];
    EXPECT_FALSE(out.error.ok());
    EXPECT_LT(out.token_ids.size(), 20u);
  }
  EXPECT_EQ(engine->health().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(heard.load(), 1);
  Collector refused;
  const absl::StatusOr<uint64_t> submitted = engine->Submit(r, refused.stream);
  EXPECT_EQ(submitted.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(submitted.status().message().find("no more steps"), std::string_view::npos) << submitted.status();
  EXPECT_EQ(engine->Score(r.prompt_ids, nullptr, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kUnavailable);
  // A listener set now hears it at once.
  bool told = false;
  engine->SetHealthListener([&](const absl::Status&) { told = true; });
  EXPECT_TRUE(told);
  engine->SetHealthListener(nullptr);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
}

}  // namespace
}  // namespace attnserve
