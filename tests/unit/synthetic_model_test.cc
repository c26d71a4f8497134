// The synthetic model (tests that run where the default model cannot be)
// loads, tokenizes text byte by byte and round-trips it, and generates on
// the CPU engine.
#include "tests/unit/synthetic_model.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "engine/core/engine.h"
#include "engine/model/model.h"
#include "tests/unit/engine_test_util.h"

namespace attnserve {
namespace {

TEST(SyntheticModelTest, LoadsTokenizesAndGenerates) {
  absl::StatusOr<std::unique_ptr<Model>> model = LoadSyntheticLlama("attnserve_synthetic_test", [](const std::string& p) { return LoadModel(p); });
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config;
  EXPECT_EQ(c.n_layers, 6);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 258);
  const std::string text = "Hello, wörld!\n";
  const std::vector<int32_t> ids = (*model)->tokenizer->Encode(text, true, true);
  ASSERT_EQ(ids.size(), 1 + 15u);  // BOS, then a token per byte
  EXPECT_EQ(ids[0], 256);
  EXPECT_EQ((*model)->tokenizer->Decode(std::span<const int32_t>(ids).subspan(1)), text);

  std::unique_ptr<Engine> engine = Engine::Create(**model, EngineOptions{}, nullptr).value();
  GenerationRequest r;
  r.prompt_ids = ids;
  r.sampling.max_tokens = 8;
  r.sampling.ignore_eos = true;
  Collector out;
  ASSERT_TRUE(engine->Submit(std::move(r), out.stream).ok());
  EXPECT_EQ(out.Wait()[0].token_ids.size(), 8u);
}

}  // namespace
}  // namespace attnserve
