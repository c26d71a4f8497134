// Byte-level BPE tokenizer built from GGUF metadata (tokenizer.ggml.*), as
// GPT-2 and SmolLM2 use it. Other tokenizer models are rejected at load.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/gguf.h"

namespace attnserve {

struct TokenOffset {
  int32_t begin = 0;  // byte offsets into the encoded text, [begin, end)
  int32_t end = 0;
};

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);
  virtual ~Tokenizer();  // defined where Impl is complete

  // add_special: prepend BOS when the model asks for it (add_bos_token).
  // parse_special: text such as "<|im_start|>" becomes its special token.
  std::vector<int32_t> Encode(std::string_view text, bool add_special, bool parse_special) const;
  // Same ids, plus each token's byte range in `text` (empty for added BOS).
  std::vector<int32_t> EncodeWithOffsets(std::string_view text, bool add_special, bool parse_special,
                                         std::vector<TokenOffset>* offsets) const;
  // Concatenated bytes of the tokens (may be invalid UTF-8 mid-character).
  // Special tokens are rendered as their text when render_special.
  std::string Decode(std::span<const int32_t> ids, bool render_special = true) const;
  // The bytes one token stands for.
  std::string TokenBytes(int32_t id) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  // EOS, EOT and other end-of-generation tokens of the model.
  bool IsEndOfGeneration(int32_t id) const;
  // NOT_FOUND for an unknown token text.
  absl::StatusOr<int32_t> TokenId(std::string_view text) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace attnserve
