// Chat templates of the supported families, recognised from the GGUF
// tokenizer.chat_template source. An unrecognised template is an error: a
// guessed format silently degrades a model's answers.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"

namespace attnserve {

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

enum class ChatTemplateKind { kChatMl, kLlama3 };

class ChatTemplate {
 public:
  // INVALID_ARGUMENT / UNIMPLEMENTED for a template this project cannot render.
  static absl::StatusOr<ChatTemplate> FromSource(std::string_view jinja_source);
  ChatTemplateKind kind() const { return kind_; }
  std::string_view name() const;
  // INVALID_ARGUMENT naming the message for an unknown role.
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages, bool add_generation_prompt) const;

 private:
  ChatTemplate(ChatTemplateKind kind, std::string default_system)
      : kind_(kind), default_system_(std::move(default_system)) {}
  ChatTemplateKind kind_;
  std::string default_system_;  // injected when the first message is not a system one; may be empty
};

}  // namespace attnserve
