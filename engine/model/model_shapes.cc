#include "engine/model/model_shapes.h"

#include <array>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnserve {
namespace {

struct Shape {
  std::string_view name;
  int32_t layers, hidden, heads, kv_heads, head_dim, ffn, vocab, context;
  float rope_base;
  bool tied_embeddings;
};

// From the models' published configs.
constexpr std::array<Shape, 3> kShapes = {{
    {"llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8192, 500000.0f, false},
    {"llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, 131072, 500000.0f, true},
    {"qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, 32768, 1000000.0f, false},
}};

std::string ModelShapeNames() {
  return absl::StrJoin(kShapes, ", ", [](std::string* out, const Shape& s) { out->append(s.name); });
}

}  // namespace

absl::StatusOr<ModelConfig> ModelShape(std::string_view name) {
  for (const Shape& s : kShapes) {
    if (s.name != name) continue;
    ModelConfig c;
    c.architecture = "llama";
    c.name = std::string(s.name);
    c.n_layers = s.layers;
    c.hidden = s.hidden;
    c.n_heads = s.heads;
    c.n_kv_heads = s.kv_heads;
    c.head_dim = s.head_dim;
    c.ffn_hidden = s.ffn;
    c.vocab_size = s.vocab;
    c.context_length = s.context;
    c.rope_base = s.rope_base;
    c.rope_dim = s.head_dim;
    c.tied_embeddings = s.tied_embeddings;
    return c;
  }
  return absl::InvalidArgumentError(absl::StrCat("\"", std::string(name), "\" is none of ", ModelShapeNames()));
}

}  // namespace attnserve
