// --load-format dummy: the named shapes, a model with a file's config and
// tokenizer but no weights (optionally in a named model's shape), and the
// CPU engine generating from random weights, the same from the same seed.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>

#include "engine/core/engine.h"
#include "engine/model/model.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_shapes.h"
#include "kernels/cpu/quant.h"
#include "tests/unit/engine_test_util.h"
#include "tests/unit/synthetic_model.h"

namespace attnserve {
namespace {

absl::StatusOr<std::unique_ptr<Model>> SyntheticWithoutWeights(std::string_view shape = {}) {
  return LoadSyntheticLlama("attnserve_dummy_model_test",
                            [shape](const std::string& p) { return LoadModelWithoutWeights(p, shape); });
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
  const std::unique_ptr<Model> real =
      LoadSyntheticLlama("attnserve_dummy_model_test", [](const std::string& p) { return LoadModel(p); }).value();
  const std::unique_ptr<Model> dummy = SyntheticWithoutWeights().value();
  EXPECT_TRUE(dummy->dummy_weights);
  EXPECT_FALSE(real->dummy_weights);
  EXPECT_TRUE(dummy->weights.layers.empty());
  EXPECT_EQ(dummy->config.n_layers, real->config.n_layers);
  EXPECT_EQ(dummy->config.name, real->config.name + " (random weights)");
  EXPECT_EQ(dummy->tokenizer->Encode("abc", true, true), real->tokenizer->Encode("abc", true, true));
}

TEST(DummyModelTest, ANamedShapeKeepsTheFilesVocabulary) {
  const std::unique_ptr<Model> dummy = SyntheticWithoutWeights("llama-3.2-1b").value();
  EXPECT_EQ(dummy->config.n_layers, 16);
  EXPECT_EQ(dummy->config.hidden, 2048);
  EXPECT_EQ(dummy->config.vocab_size, dummy->tokenizer->vocab_size());
  EXPECT_EQ(dummy->config.name, "llama-3.2-1b (random weights)");
  const absl::Status unknown = SyntheticWithoutWeights("gpt-5").status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
}

TEST(RandomWeightsTest, Q8MatricesOfUnitVarianceOutputsAndNormsOfOnes) {
  ModelConfig c = ModelShape("llama-3.2-1b").value();
  c.n_layers = 1;
  c.vocab_size = 64;
  const LlamaWeights w = RandomLlamaWeights(c, 1).value();
  ASSERT_EQ(w.layers.size(), 1u);
  EXPECT_EQ(w.layers[0].wq.type, GgmlType::kQ8_0);
  EXPECT_EQ(w.layers[0].w_down.rows, c.hidden);
  EXPECT_EQ(w.layers[0].w_down.cols, c.ffn_hidden);
  EXPECT_EQ(w.output_norm[c.hidden - 1], 1.0f);
  // Uniform in ±sqrt(3 / fan_in): a row's mean square is 1 / fan_in.
  std::vector<float> row(c.ffn_hidden);
  double mean_square = 0.0;
  for (int64_t r = 0; r < 64; ++r) {
    DequantizeRow(GgmlType::kQ8_0, static_cast<const uint8_t*>(w.layers[0].w_down.data) + r * w.layers[0].w_down.row_bytes,
                  row.data(), c.ffn_hidden);
    for (float x : row) mean_square += static_cast<double>(x) * x;
  }
  EXPECT_NEAR(mean_square / (64.0 * c.ffn_hidden) * c.ffn_hidden, 1.0, 0.05);
  c.hidden = 100;  // not whole Q8_0 blocks
  EXPECT_EQ(RandomLlamaWeights(c, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DummyModelTest, TheCpuEngineGeneratesFromRandomWeights) {
  const std::unique_ptr<Model> dummy = SyntheticWithoutWeights().value();
  const auto generate = [&] {
    std::unique_ptr<Engine> engine = Engine::Create(*dummy, EngineOptions{}, nullptr).value();
    GenerationRequest r;
    r.prompt_ids = dummy->tokenizer->Encode("random weights", true, true);
    r.sampling.max_tokens = 12;
    r.sampling.ignore_eos = true;
    return RunAlone(*engine, r);
  };
  const std::vector<int32_t> first = generate();
  EXPECT_EQ(first.size(), 12u);
  EXPECT_EQ(generate(), first);
  // Weights all alike (zeros, say) would repeat one token.
  EXPECT_NE(std::count(first.begin(), first.end(), first[0]), 12);
}

}  // namespace
}  // namespace attnserve
