#include "engine/model/model.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/model_shapes.h"

namespace attnserve {
namespace {

// Touches one byte per page of every tensor; volatile keeps the reads.
void Prefault(const GgufFile& gguf, const LoadProgress& progress) {
  uint64_t total = 0;
  for (const GgufTensor& t : gguf.tensors()) total += t.nbytes;
  constexpr uint64_t kPage = 4096;
  uint64_t done = 0;
  int reported = -1;
  volatile uint8_t sink = 0;
  for (const GgufTensor& t : gguf.tensors()) {
    for (uint64_t off = 0; off < t.nbytes; off += kPage) sink = sink + t.data[off];
    done += t.nbytes;
    const int percent = total == 0 ? 100 : static_cast<int>(100 * done / total);
    if (progress && percent / 10 != reported) {
      reported = percent / 10;
      progress(static_cast<double>(done) / std::max<uint64_t>(total, 1));
    }
  }
}

// The file's config, tokenizer and chat template.
absl::StatusOr<std::unique_ptr<Model>> OpenModel(const std::string& path) {
  auto model = std::make_unique<Model>();
  ATTN_ASSIGN_OR_RETURN(model->gguf, GgufFile::Open(path));
  ATTN_ASSIGN_OR_RETURN(model->config, ModelConfigFromGguf(*model->gguf));
  ATTN_ASSIGN_OR_RETURN(model->tokenizer, Tokenizer::FromGguf(*model->gguf));
  absl::StatusOr<std::string> source = model->gguf->GetString("tokenizer.chat_template");
  absl::StatusOr<ChatTemplate> chat = source.ok() ? ChatTemplate::FromSource(*source)
                                                  : absl::StatusOr<ChatTemplate>(source.status());
  if (chat.ok()) {
    model->chat_template = *chat;
  } else {
    model->chat_template_error = chat.status();
  }
  return model;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path, const LoadProgress& progress) {
  ATTN_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, OpenModel(path));
  ATTN_ASSIGN_OR_RETURN(model->weights, LoadLlamaWeights(*model->gguf, model->config));
  Prefault(*model->gguf, progress);
  return model;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModelWithoutWeights(const std::string& path, std::string_view shape) {
  ATTN_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, OpenModel(path));
  model->dummy_weights = true;
  if (!shape.empty()) {
    absl::StatusOr<ModelConfig> named = ModelShape(shape);
    if (!named.ok()) return absl::InvalidArgumentError(absl::StrCat("dummy shape: ", named.status().message()));
    ModelConfig body = *std::move(named);
    body.vocab_size = model->config.vocab_size;
    model->config = body;
  }
  // What GetModelInfo shows: these are not the model's outputs.
  model->config.name += " (random weights)";
  return model;
}

}  // namespace attnserve
