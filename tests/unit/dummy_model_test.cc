// --load-format dummy: the named shapes, a model with a file's config and
// tokenizer but no weights (optionally in a named model's shape), and the
// CPU backend's refusal of it (random weights are the CUDA backend's).
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "engine/core/engine.h"
#include "engine/model/model.h"
#include "engine/model/model_shapes.h"
#include "tests/unit/synthetic_model.h"

namespace attnserve {
namespace {

std::string SyntheticPath() {
  const std::string path = (std::filesystem::temp_directory_path() / "attnserve_dummy_model_test.gguf").string();
  EXPECT_TRUE(WriteSyntheticLlama(path));
  return path;
}

TEST(ModelShapeTest, KnownShapesAndAClearErrorForOthers) {
  const ModelConfig llama = ModelShape("llama-3-8b").value();
  EXPECT_EQ(llama.n_layers, 32);
  EXPECT_EQ(llama.q_dim(), 4096);
  EXPECT_EQ(llama.kv_dim(), 1024);
  EXPECT_EQ(llama.ffn_hidden, 14336);
  EXPECT_EQ(llama.vocab_size, 128256);
  const ModelConfig small = ModelShape("llama-3.2-1b").value();
  EXPECT_EQ(small.head_dim, 64);
  EXPECT_TRUE(small.tied_embeddings);
  EXPECT_EQ(ModelShape("qwen2.5-7b").value().n_kv_heads, 4);
  const absl::StatusOr<ModelConfig> unknown = ModelShape("llama-2-7b");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("llama-3-8b, llama-3.2-1b, qwen2.5-7b"), std::string::npos)
      << unknown.status();
}

TEST(DummyModelTest, TheFilesConfigAndTokenizerWithoutWeights) {
  const std::string path = SyntheticPath();
  const std::unique_ptr<Model> real = LoadModel(path).value();
  const std::unique_ptr<Model> dummy = LoadModelWithoutWeights(path).value();
  EXPECT_TRUE(dummy->dummy_weights);
  EXPECT_FALSE(real->dummy_weights);
  EXPECT_TRUE(dummy->weights.layers.empty());
  EXPECT_EQ(dummy->config.n_layers, real->config.n_layers);
  EXPECT_EQ(dummy->config.name, real->config.name + " (random weights)");
  EXPECT_EQ(dummy->tokenizer->Encode("abc", true, true), real->tokenizer->Encode("abc", true, true));
}

TEST(DummyModelTest, ANamedShapeKeepsTheFilesVocabulary) {
  const std::string path = SyntheticPath();
  const std::unique_ptr<Model> dummy = LoadModelWithoutWeights(path, "llama-3.2-1b").value();
  EXPECT_EQ(dummy->config.n_layers, 16);
  EXPECT_EQ(dummy->config.hidden, 2048);
  EXPECT_EQ(dummy->config.vocab_size, dummy->tokenizer->vocab_size());
  EXPECT_EQ(dummy->config.name, "llama-3.2-1b (random weights)");
  EXPECT_EQ(LoadModelWithoutWeights(path, "gpt-5").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DummyModelTest, TheCpuBackendRefusesRandomWeights) {
  const std::unique_ptr<Model> dummy = LoadModelWithoutWeights(SyntheticPath()).value();
  EngineOptions options;
  options.backend = "cpu";
  const absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(*dummy, options, nullptr);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(engine.status().message().find("cuda"), std::string::npos) << engine.status();
}

}  // namespace
}  // namespace attnserve
