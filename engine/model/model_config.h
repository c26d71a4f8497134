// Hyper-parameters of a Llama-architecture model, read from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/gguf.h"

namespace attnserve {

struct ModelConfig {
  std::string architecture;  // "llama"
  std::string name;
  int32_t n_layers = 0;
  int32_t hidden = 0;        // embedding length
  int32_t n_heads = 0;       // query heads
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t ffn_hidden = 0;
  int32_t vocab_size = 0;
  int32_t context_length = 0;
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;
  float rope_freq_scale = 1.0f;  // 1 / linear scaling factor
  int32_t rope_dim = 0;          // rotated dimensions per head
  bool tied_embeddings = false;  // output projection is token_embd

  int32_t q_dim() const { return n_heads * head_dim; }
  int32_t kv_dim() const { return n_kv_heads * head_dim; }
};

// Validates the architecture and every size; errors name the metadata key.
absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf);

}  // namespace attnserve
