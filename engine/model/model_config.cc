#include "engine/model/model_config.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnserve {
namespace {

absl::StatusOr<int32_t> PositiveInt(const GgufFile& gguf, const std::string& key, int64_t max) {
  absl::StatusOr<int64_t> v = gguf.GetInt(key);
  if (!v.ok()) return v.status();
  if (*v <= 0 || *v > max) {
    return absl::InvalidArgumentError(absl::StrCat("gguf: ", key, " = ", *v, " is out of range [1, ", max, "]"));
  }
  return static_cast<int32_t>(*v);
}

// Leaves *out unchanged when the key is absent.
absl::Status ReadOptionalInt(const GgufFile& gguf, const std::string& key, int64_t max, int32_t* out) {
  if (!gguf.HasKey(key)) return absl::OkStatus();
  absl::StatusOr<int32_t> v = PositiveInt(gguf, key, max);
  if (!v.ok()) return v.status();
  *out = *v;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf) {
  ModelConfig c;
  absl::StatusOr<std::string> arch = gguf.GetString("general.architecture");
  if (!arch.ok()) return arch.status();
  if (*arch != "llama") {
    return absl::UnimplementedError(absl::StrCat("architecture '", *arch, "' is not supported (supported: llama)"));
  }
  c.architecture = *arch;
  c.name = gguf.GetString("general.name").value_or("");
  const std::string p = c.architecture + ".";
  struct RequiredInt {
    int32_t ModelConfig::*field;
    const char* key;
    int64_t max;
  };
  for (const RequiredInt& k : {RequiredInt{&ModelConfig::n_layers, "block_count", 1024},
                               RequiredInt{&ModelConfig::hidden, "embedding_length", 1 << 17},
                               RequiredInt{&ModelConfig::n_heads, "attention.head_count", 1024},
                               RequiredInt{&ModelConfig::ffn_hidden, "feed_forward_length", 1 << 20},
                               RequiredInt{&ModelConfig::context_length, "context_length", 1 << 24}}) {
    absl::StatusOr<int32_t> v = PositiveInt(gguf, p + k.key, k.max);
    if (!v.ok()) return v.status();
    c.*k.field = *v;
  }
  c.n_kv_heads = c.n_heads;
  if (absl::Status s = ReadOptionalInt(gguf, p + "attention.head_count_kv", c.n_heads, &c.n_kv_heads); !s.ok()) {
    return s;
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("gguf: ", p, "attention.head_count (", c.n_heads,
                                                   ") is not a multiple of head_count_kv (", c.n_kv_heads, ")"));
  }
  if (c.hidden % c.n_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("gguf: ", p, "embedding_length (", c.hidden,
                                                   ") is not a multiple of head_count (", c.n_heads, ")"));
  }
  c.head_dim = c.hidden / c.n_heads;
  if (absl::Status s = ReadOptionalInt(gguf, p + "attention.key_length", 1024, &c.head_dim); !s.ok()) return s;
  if (c.head_dim % 16 != 0) {
    return absl::UnimplementedError(absl::StrCat("head_dim ", c.head_dim, " is not a multiple of 16"));
  }
  c.rope_dim = c.head_dim;
  if (absl::Status s = ReadOptionalInt(gguf, p + "rope.dimension_count", c.head_dim, &c.rope_dim); !s.ok()) {
    return s;
  }
  if (gguf.HasKey(p + "rope.freq_base")) {
    absl::StatusOr<double> v = gguf.GetFloat(p + "rope.freq_base");
    if (!v.ok()) return v.status();
    if (!(*v > 1.0)) return absl::InvalidArgumentError(absl::StrCat("gguf: ", p, "rope.freq_base = ", *v, " must be > 1"));
    c.rope_base = static_cast<float>(*v);
  }
  if (gguf.HasKey(p + "attention.layer_norm_rms_epsilon")) {
    absl::StatusOr<double> v = gguf.GetFloat(p + "attention.layer_norm_rms_epsilon");
    if (!v.ok()) return v.status();
    if (!(*v > 0.0 && *v < 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat("gguf: ", p, "attention.layer_norm_rms_epsilon = ", *v));
    }
    c.rms_eps = static_cast<float>(*v);
  }
  // Rope scaling: linear scaling divides positions; other kinds change the
  // frequencies per dimension and are not implemented yet.
  std::string scaling = gguf.GetString(p + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    absl::StatusOr<double> f = gguf.GetFloat(p + "rope.scaling.factor");
    if (!f.ok()) return f.status();
    if (!(*f >= 1.0)) return absl::InvalidArgumentError(absl::StrCat("gguf: ", p, "rope.scaling.factor = ", *f));
    c.rope_freq_scale = static_cast<float>(1.0 / *f);
  } else if (scaling != "none") {
    return absl::UnimplementedError(absl::StrCat("gguf: ", p, "rope.scaling.type '", scaling, "' is not supported"));
  }
  if (gguf.GetTensor("rope_freqs.weight").ok()) {
    return absl::UnimplementedError("gguf: per-dimension rope frequencies (rope_freqs.weight) are not supported");
  }
  absl::StatusOr<const GgufTensor*> embd = gguf.GetTensor("token_embd.weight");
  if (!embd.ok()) return embd.status();
  if ((*embd)->dims.size() != 2 || (*embd)->dims[0] != c.hidden) {
    return absl::InvalidArgumentError("gguf: token_embd.weight must have shape {embedding_length, vocab}");
  }
  c.vocab_size = static_cast<int32_t>((*embd)->dims[1]);
  c.tied_embeddings = !gguf.GetTensor("output.weight").ok();
  return c;
}

}  // namespace attnserve
