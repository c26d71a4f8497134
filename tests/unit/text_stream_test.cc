#include "engine/model/text_stream.h"

#include <string>

#include "gtest/gtest.h"

namespace attnserve {
namespace {

TEST(TextStreamTest, HoldsBackUnfinishedCharacters) {
  const std::string euro = "\xE2\x82\xAC";  // U+20AC, three bytes
  TextStream s;
  EXPECT_EQ(s.Push("a" + euro.substr(0, 1)), "a");
  EXPECT_EQ(s.Push(euro.substr(1, 1)), "");
  EXPECT_EQ(s.Push(euro.substr(2, 1) + "b"), euro + "b");
  EXPECT_EQ(s.Flush(), "");
}

TEST(TextStreamTest, EveryByteSplitOfAnEmojiSequenceReassembles) {
  const std::string text = "x\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD y \xE4\xB8\xAD";  // thumbs up + skin tone, CJK
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    TextStream s;
    std::string out = s.Push(text.substr(0, cut));
    EXPECT_EQ(out.size(), CompleteUtf8Prefix(text.substr(0, cut)));
    out += s.Push(text.substr(cut));
    out += s.Flush();
    EXPECT_EQ(out, text) << "cut at " << cut;
  }
}

TEST(TextStreamTest, InvalidBytesAreNotHeldForever) {
  TextStream s;
  EXPECT_EQ(s.Push("\xFF"), "\xFF");        // never valid
  EXPECT_EQ(s.Push("\x80z"), "\x80z");      // stray continuation byte
  EXPECT_EQ(s.Push("\xF0\x9F"), "");         // could still complete
  EXPECT_EQ(s.Flush(), "\xF0\x9F");         // ... but the stream ended
}

}  // namespace
}  // namespace attnserve
