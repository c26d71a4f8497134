// attnserve tokenize: the model's tokenizer and chat template without its
// weights, for tests that compare them with llama.cpp and Jinja2.
//
//   --strings_file F.json: a JSON array whose items are strings, or arrays of
//     byte values for text that is not valid UTF-8. Prints a JSON array of
//     {"ids", "offsets": [[begin, end], ...], "decoded": [byte values]}.
//   --chat_file F.json: a JSON array of conversations, each an array of
//     {"role", "content"}. Prints a JSON array of {"text"} or {"error"}.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "engine/model/chat_template.h"
#include "engine/model/gguf.h"
#include "engine/model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/common_flags.h"

ABSL_FLAG(std::string, strings_file, "", "JSON array of texts to encode (strings or arrays of bytes).");
ABSL_FLAG(bool, parse_special, false, "Recognise special-token text such as <|im_start|>.");
ABSL_FLAG(bool, add_special, false, "Add BOS/EOS when the model asks for them.");
ABSL_FLAG(std::string, chat_file, "", "JSON array of conversations to render with the chat template.");
ABSL_FLAG(std::string, chat_template_file, "", "Jinja template to use instead of the model's.");
ABSL_FLAG(bool, add_generation_prompt, true, "End each rendered conversation with the assistant's header.");

namespace attnserve {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot read '%s'", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) return absl::InvalidArgumentError(absl::StrFormat("'%s' is not a JSON array", path));
  return j;
}

std::string TextOf(const nlohmann::json& item) {
  if (item.is_string()) return item.get<std::string>();
  std::string bytes;
  for (const nlohmann::json& b : item) bytes += static_cast<char>(b.get<int>());
  return bytes;
}

nlohmann::json EncodeAll(const Tokenizer& tokenizer, const nlohmann::json& texts) {
  nlohmann::json out = nlohmann::json::array();
  for (const nlohmann::json& item : texts) {
    const std::string text = TextOf(item);
    std::vector<TokenOffset> offsets;
    const std::vector<int32_t> ids = tokenizer.EncodeWithOffsets(text, absl::GetFlag(FLAGS_add_special),
                                                                 absl::GetFlag(FLAGS_parse_special), &offsets);
    nlohmann::json spans = nlohmann::json::array();
    for (const TokenOffset& o : offsets) spans.push_back({o.begin, o.end});
    const std::string decoded = tokenizer.Decode(ids);
    out.push_back(
        {{"ids", ids}, {"offsets", spans}, {"decoded", std::vector<uint8_t>(decoded.begin(), decoded.end())}});
  }
  return out;
}

nlohmann::json RenderAll(const ChatTemplate& chat, const nlohmann::json& conversations) {
  nlohmann::json out = nlohmann::json::array();
  for (const nlohmann::json& conversation : conversations) {
    std::vector<ChatMessage> messages;
    for (const nlohmann::json& m : conversation) messages.push_back({m.at("role"), m.at("content")});
    absl::StatusOr<std::string> text = chat.Render(messages, absl::GetFlag(FLAGS_add_generation_prompt));
    out.push_back(text.ok() ? nlohmann::json{{"text", *text}} : nlohmann::json{{"error", text.status().ToString()}});
  }
  return out;
}

absl::StatusOr<nlohmann::json> Run() {
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(absl::GetFlag(FLAGS_model));
  if (!gguf.ok()) return gguf.status();
  if (const std::string path = absl::GetFlag(FLAGS_strings_file); !path.empty()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(**gguf);
    if (!tokenizer.ok()) return tokenizer.status();
    absl::StatusOr<nlohmann::json> texts = ReadJson(path);
    if (!texts.ok()) return texts.status();
    return EncodeAll(**tokenizer, *texts);
  }
  if (const std::string path = absl::GetFlag(FLAGS_chat_file); !path.empty()) {
    const std::string template_path = absl::GetFlag(FLAGS_chat_template_file);
    absl::StatusOr<std::string> source =
        template_path.empty() ? (*gguf)->GetString("tokenizer.chat_template") : ReadFile(template_path);
    if (!source.ok()) return source.status();
    absl::StatusOr<ChatTemplate> chat = ChatTemplate::FromSource(*source);
    if (!chat.ok()) return chat.status();
    absl::StatusOr<nlohmann::json> conversations = ReadJson(path);
    if (!conversations.ok()) return conversations.status();
    return RenderAll(*chat, *conversations);
  }
  return absl::InvalidArgumentError("give --strings_file or --chat_file");
}

}  // namespace

int RunTokenize() {
  try {
    absl::StatusOr<nlohmann::json> result = Run();
    if (!result.ok()) {
      absl::FPrintF(stderr, "error: %s\n", result.status().ToString());
      return 1;
    }
    std::printf("%s\n", result->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  } catch (const nlohmann::json::exception& e) {  // malformed input files
    absl::FPrintF(stderr, "error: %s\n", e.what());
    return 2;
  }
}

}  // namespace attnserve
