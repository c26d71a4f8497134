// A loaded model: the mapped GGUF file and everything derived from it.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/model/chat_template.h"
#include "engine/model/gguf.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "engine/model/tokenizer.h"

namespace attnserve {

struct Model {
  std::unique_ptr<GgufFile> gguf;  // owns the mapping the weights point into
  ModelConfig config;
  LlamaWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;  // absent when the file has none
  absl::Status chat_template_error;           // why it is absent, for requests that need it
  // No weights were read (`weights` is empty): the backend draws them at
  // random in the config's shapes (LoadModelWithoutWeights): the CPU's as
  // Q8_0 (RandomLlamaWeights), the GPU's as bf16.
  bool dummy_weights = false;
};

// Called with the fraction of weight bytes brought into memory so far.
using LoadProgress = std::function<void(double fraction)>;

// Opens, validates and pre-faults the weights so the first request does not
// pay for page faults.
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path, const LoadProgress& progress = {});

// The file's config, tokenizer and chat template, and no weights
// (`serve --load-format dummy`): throughput studies without the model's
// weights. `shape` non-empty: the transformer of that model (ModelShape)
// instead of the file's, with the file's vocabulary, so that every token
// the model emits has text.
absl::StatusOr<std::unique_ptr<Model>> LoadModelWithoutWeights(const std::string& path, std::string_view shape = {});

}  // namespace attnserve
