// The transformer shapes of well-known models, for weights drawn at random
// (`serve --load-format dummy --dummy-shape NAME`, the GPU benchmarks):
// throughput at the sizes people deploy without their files at hand. Only
// the shapes count there, so Qwen2.5's QKV biases are left out.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"

namespace attnserve {

// "llama-3-8b", "llama-3.2-1b", "qwen2.5-7b": the model's config, its
// vocabulary size included. INVALID_ARGUMENT names the known shapes (the
// caller names the field).
absl::StatusOr<ModelConfig> ModelShape(std::string_view name);

}  // namespace attnserve
