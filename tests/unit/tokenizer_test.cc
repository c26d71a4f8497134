// Tokenizer and chat templates on the default model. Expected ids were taken
// once from llama.cpp (llama-cpp-python 0.3.36) on the same GGUF;
// tests/python/test_tokenizer.py compares a large corpus live.
#include "engine/model/tokenizer.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/model/chat_template.h"
#include "engine/model/gguf.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ModelPath() {
  const char* root = std::getenv("ATTNSERVE_SOURCE_DIR");
  return std::string(root ? root : ".") + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(ModelPath())) return;
    absl::StatusOr<std::unique_ptr<GgufFile>> opened = GgufFile::Open(ModelPath());
    ASSERT_TRUE(opened.ok()) << opened.status();
    gguf_ = opened->release();
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*gguf_);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete gguf_;
  }
  void SetUp() override {
    if (tokenizer_ == nullptr) GTEST_SKIP() << ModelPath() << " is missing (scripts/setup.sh fetches it)";
  }
  static std::vector<int32_t> Encode(std::string_view text, bool parse_special = false) {
    return tokenizer_->Encode(text, /*add_special=*/true, parse_special);
  }
  static inline GgufFile* gguf_ = nullptr;
  static inline Tokenizer* tokenizer_ = nullptr;
};

TEST_F(TokenizerTest, MatchesLlamaCpp) {
  EXPECT_THAT(Encode("Hello world"), ElementsAre(19556, 905));
  // Digits are split one by one; contractions are pieces of their own.
  EXPECT_THAT(Encode("The year 2024 isn't over, y'all!"),
              ElementsAre(504, 713, 216, 34, 32, 34, 36, 3247, 982, 690, 28, 329, 23, 449, 17));
  EXPECT_THAT(Encode("caf\u00e9 \U0001F600 \u65e5\u672c"),
              ElementsAre(83, 1939, 2756, 40303, 218, 17097, 241, 115, 40993));
  EXPECT_THAT(Encode("  x\n\n\ty  "), ElementsAre(216, 1792, 1116, 197, 105, 256));
  // An invalid byte is tokenized as U+FFFD, as llama.cpp does.
  EXPECT_THAT(Encode("a\xff"
                     "b"),
              ElementsAre(81, 24211, 82));
  EXPECT_TRUE(Encode("").empty());
}

TEST_F(TokenizerTest, SpecialTokens) {
  EXPECT_THAT(Encode("<|im_start|>user\nhi<|im_end|>\n", /*parse_special=*/true),
              ElementsAre(1, 4093, 198, 6004, 2, 198));
  EXPECT_THAT(Encode("<|im_start|>user"), ElementsAre(44, 108, 306, 79, 3738, 108, 46, 4093));
  EXPECT_EQ(tokenizer_->TokenId("<|im_end|>").value(), 2);
  EXPECT_EQ(tokenizer_->TokenId("<|no such token|>").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tokenizer_->vocab_size(), 49152);
  EXPECT_EQ(tokenizer_->bos_id(), 1);
  EXPECT_EQ(tokenizer_->eos_id(), 2);
  // llama.cpp's end-of-generation set for this vocabulary.
  for (int32_t id = 0; id < 20; ++id) EXPECT_EQ(tokenizer_->IsEndOfGeneration(id), id == 0 || id == 2 || id == 4) << id;
  const std::vector<int32_t> ids{1, 4093, 198, 6004, 2};
  EXPECT_EQ(tokenizer_->Decode(ids), "<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(tokenizer_->Decode(ids, /*render_special=*/false), "user\nhi");
}

TEST_F(TokenizerTest, OffsetsCoverTheText) {
  const std::string text = "<|im_start|>Gr\u00fc\u00df dich \U0001F44B\U0001F3FD!\n\n  12345\xff\xc0\x80 end";
  std::vector<TokenOffset> offsets;
  const std::vector<int32_t> ids = tokenizer_->EncodeWithOffsets(text, true, true, &offsets);
  ASSERT_EQ(ids.size(), offsets.size());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(offsets[0].end, 12);
  int32_t at = 0;
  for (const TokenOffset& o : offsets) {
    EXPECT_EQ(o.begin, at);
    EXPECT_LE(o.begin, o.end);
    at = o.end;
  }
  EXPECT_EQ(at, static_cast<int32_t>(text.size()));
}

TEST_F(TokenizerTest, LongTextIsFast) {
  std::ifstream in("/usr/share/common-licenses/GPL-3");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  if (text.empty()) GTEST_SKIP() << "no /usr/share/common-licenses/GPL-3";
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tokenizer_->Encode(text, false, false);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("encoded %zu bytes into %zu tokens in %.1f ms\n", text.size(), ids.size(), ms);
  EXPECT_GT(ids.size(), 5000u);
  EXPECT_LT(ms, 1000.0);
  EXPECT_EQ(tokenizer_->Decode(ids), text);
}

TEST_F(TokenizerTest, ChatTemplateOfTheModel) {
  absl::StatusOr<ChatTemplate> chat = ChatTemplate::FromSource(gguf_->GetString("tokenizer.chat_template").value());
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->name(), "chatml");
  const std::vector<ChatMessage> messages{{"user", "Hi"}};
  EXPECT_EQ(chat->Render(messages, true).value(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<ChatMessage> bad{{"user", "Hi"}, {"robot", "beep"}};
  const absl::Status status = chat->Render(bad, true).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("messages[1]"));
  EXPECT_THAT(status.message(), HasSubstr("robot"));
}

TEST(ChatTemplateTest, Recognition) {
  EXPECT_EQ(ChatTemplate::FromSource("{{ messages }}").status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(ChatTemplate::FromSource("[INST] {{ m }} [/INST]").status().message(), HasSubstr("not recognised"));
  absl::StatusOr<ChatTemplate> llama3 = ChatTemplate::FromSource(
      "{{ bos_token }}<|start_header_id|>{{ role }}<|end_header_id|>\n\n{{ content | trim }}<|eot_id|>");
  ASSERT_TRUE(llama3.ok()) << llama3.status();
  const std::vector<ChatMessage> messages{{"system", "Be brief."}, {"user", "  Hi \n"}};
  EXPECT_EQ(
      llama3->Render(messages, true).value(),
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

}  // namespace
}  // namespace attnserve
