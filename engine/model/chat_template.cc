// The two families are recognised by their marker tokens rather than by
// evaluating Jinja; what each renders is reproduced from the templates
// themselves (tests/python/test_tokenizer.py renders them with Jinja2).
#include "engine/model/chat_template.h"

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnserve {
namespace {

constexpr std::string_view kSystemOpen = "<|im_start|>system";
constexpr std::string_view kImEnd = "<|im_end|>";

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Undoes the escapes a Jinja string literal may use.
std::string UnescapeJinja(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
  }
  return out;
}

// A ChatML template that injects a default system turn (SmolLM2, Qwen2.5)
// spells it as one string literal '<|im_start|>system\n...<|im_end|>\n'; its
// text is returned, or "" when there is none.
std::string ChatMlDefaultSystem(std::string_view source) {
  for (size_t at = source.find(kSystemOpen); at != std::string_view::npos; at = source.find(kSystemOpen, at + 1)) {
    if (at == 0) continue;
    const char quote = source[at - 1];
    if (quote != '\'' && quote != '"') continue;
    std::string_view rest = source.substr(at + kSystemOpen.size());
    if (rest.starts_with('\n')) {
      rest.remove_prefix(1);
    } else if (rest.starts_with("\\n")) {
      rest.remove_prefix(2);
    } else {
      continue;
    }
    const size_t end = rest.find(kImEnd);
    const size_t closing = rest.find(quote);
    if (end != std::string_view::npos && end < closing) return UnescapeJinja(rest.substr(0, end));
  }
  return "";
}

// Jinja's trim filter is Python's str.strip(), whose whitespace includes
// U+001C..U+001F besides Unicode White_Space.
bool IsPythonSpace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The codepoint encoded by `s` exactly, or U+FFFD when it is not one codepoint.
uint32_t OneCodepoint(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i])); };
  if (s.size() == 1 && b(0) < 0x80) return b(0);
  if (s.size() == 2 && (b(0) & 0xE0) == 0xC0) return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
  if (s.size() == 3 && (b(0) & 0xF0) == 0xE0) return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return 0xFFFD;  // no whitespace is 4 bytes long
}

size_t LeadLength(unsigned char c) { return c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4; }

std::string_view StripPythonWhitespace(std::string_view s) {
  while (!s.empty()) {
    const size_t n = std::min(LeadLength(static_cast<unsigned char>(s.front())), s.size());
    if (!IsPythonSpace(OneCodepoint(s.substr(0, n)))) break;
    s.remove_prefix(n);
  }
  while (!s.empty()) {
    size_t n = 1;
    while (n < s.size() && n < 3 && (static_cast<unsigned char>(s[s.size() - n]) & 0xC0) == 0x80) ++n;
    if (!IsPythonSpace(OneCodepoint(s.substr(s.size() - n)))) break;
    s.remove_suffix(n);
  }
  return s;
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromSource(std::string_view jinja_source) {
  if (Contains(jinja_source, "<|im_start|>") && Contains(jinja_source, kImEnd)) {
    return ChatTemplate(ChatTemplateKind::kChatMl, ChatMlDefaultSystem(jinja_source));
  }
  if (Contains(jinja_source, "<|start_header_id|>") && Contains(jinja_source, "<|eot_id|>")) {
    // Llama 3.1+ templates add a dated system preamble and tool calling.
    if (Contains(jinja_source, "Cutting Knowledge Date")) {
      return absl::UnimplementedError(
          "chat template not recognised: Llama 3.1+ (dated system preamble) is not supported");
    }
    return ChatTemplate(ChatTemplateKind::kLlama3, "");
  }
  return absl::UnimplementedError(
      "chat template not recognised: only ChatML (<|im_start|>) and Llama-3 (<|start_header_id|>) are supported");
}

std::string_view ChatTemplate::name() const { return kind_ == ChatTemplateKind::kChatMl ? "chatml" : "llama3"; }

absl::StatusOr<std::string> ChatTemplate::Render(std::span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "]: unknown role '", role, "' (expected system, user or assistant)"));
    }
  }
  std::string out;
  if (kind_ == ChatTemplateKind::kChatMl) {
    if (!messages.empty() && messages[0].role != "system" && !default_system_.empty()) {
      out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
    }
    for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }
  // The BOS text comes with the first message only, as the template has it.
  if (!messages.empty()) out += "<|begin_of_text|>";
  for (const ChatMessage& m : messages) {
    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + std::string(StripPythonWhitespace(m.content)) +
           "<|eot_id|>";
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace attnserve
