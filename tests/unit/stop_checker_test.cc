#include "engine/sampling/stop_checker.h"

#include <random>
#include <string>
#include <vector>

#include "engine/model/text_stream.h"
#include "gtest/gtest.h"

namespace attnserve {
namespace {

struct Outcome {
  std::string text;  // all deltas, then Flush() unless stopped
  bool stopped = false;
  bool operator==(const Outcome&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  return os << "{\"" << o.text << "\", " << (o.stopped ? "stopped" : "not stopped") << "}";
}

// Feeds `tokens` in order; checks every delta is whole UTF-8 characters.
Outcome Feed(const std::vector<std::string>& stop, const std::vector<std::string>& tokens, int32_t min_tokens = 0) {
  StopChecker checker(stop, min_tokens);
  Outcome out;
  for (const std::string& t : tokens) {
    const StopChecker::Result r = checker.Push(t);
    EXPECT_EQ(CompleteUtf8Prefix(r.delta), r.delta.size()) << "delta ends inside a character";
    if (!r.delta.empty()) {
      EXPECT_NE(static_cast<unsigned char>(r.delta[0]) & 0xC0, 0x80) << "delta starts inside a character";
    }
    out.text += r.delta;
    if (r.stopped) {
      out.stopped = true;
      EXPECT_TRUE(checker.Push("more").stopped);
      EXPECT_EQ(checker.Flush(), "");
      return out;
    }
  }
  out.text += checker.Flush();
  return out;
}

// The text before the first byte at which a stop string ends (the longest
// one ending there), by brute force.
Outcome Expected(const std::vector<std::string>& stop, const std::string& text) {
  for (size_t end = 1; end <= text.size(); ++end) {
    size_t start = std::string::npos;
    for (const std::string& s : stop) {
      if (s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0) start = std::min(start, end - s.size());
    }
    if (start != std::string::npos) return {text.substr(0, start), true};
  }
  return {text, false};
}

std::vector<std::string> Bytes(const std::string& text) {
  std::vector<std::string> out;
  for (char c : text) out.emplace_back(1, c);
  return out;
}

TEST(StopCheckerTest, WithoutStopStringsOnlyUnfinishedCharactersWait) {
  StopChecker checker({});
  EXPECT_EQ(checker.Push("ab\xC3").delta, "ab");  // first byte of "ö"
  EXPECT_EQ(checker.Push("\xB6 c").delta, "\xC3\xB6 c");
  EXPECT_EQ(checker.Push("\xE2\x82").delta, "");  // two bytes of "€"
  EXPECT_EQ(checker.Flush(), "\xE2\x82");
}

TEST(StopCheckerTest, HoldsBackAPossibleStartAndReleasesItOnMismatch) {
  const std::vector<std::string> stop = {"Hello"};
  StopChecker checker(stop);
  EXPECT_EQ(checker.Push("say Hel").delta, "say ");
  const StopChecker::Result r = checker.Push("p me");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.delta, "Help me");
  EXPECT_EQ(checker.Push(" Hell").delta, " ");
  EXPECT_EQ(checker.Flush(), "Hell");
}

TEST(StopCheckerTest, EveryCutIntoTwoOrThreeTokensGivesTheSameText) {
  // Multi-byte characters in the text and in the stop strings; cuts land
  // inside them too.
  const std::string text = "a\xC3\xB1" "b \xE2\x82\xAC\xC3\xB6! tail \xF0\x9F\x98\x80";  // "añb €ö! tail 😀"
  for (const std::vector<std::string>& stop : std::vector<std::vector<std::string>>{
           {"\xC3\xB6!"}, {"\xE2\x82\xAC"}, {"tail", "b \xE2"}, {"zzz"}, {"\xF0\x9F\x98\x80"}}) {
    const Outcome expected = Expected(stop, text);
    for (size_t i = 0; i <= text.size(); ++i) {
      for (size_t j = i; j <= text.size(); ++j) {
        const std::vector<std::string> tokens = {text.substr(0, i), text.substr(i, j - i), text.substr(j)};
        ASSERT_EQ(Feed(stop, tokens), expected) << stop[0] << " cut at " << i << ", " << j;
      }
    }
    EXPECT_EQ(Feed(stop, Bytes(text)), expected) << stop[0];
  }
  EXPECT_EQ(Expected({"\xC3\xB6!"}, text).text, "a\xC3\xB1" "b \xE2\x82\xAC");
}

TEST(StopCheckerTest, StopStringAtTheVeryStart) {
  EXPECT_EQ(Feed({"END"}, {"END", "x"}), (Outcome{"", true}));
  EXPECT_EQ(Feed({"END"}, {"EN", "Dx"}), (Outcome{"", true}));
  EXPECT_EQ(Feed({"END"}, {"E", "N", "D"}), (Outcome{"", true}));
}

TEST(StopCheckerTest, OverlappingStopStrings) {
  // Self-overlap: the matcher falls back instead of restarting.
  EXPECT_EQ(Feed({"aab"}, Bytes("xaaab")), (Outcome{"xa", true}));
  EXPECT_EQ(Feed({"abab"}, {"ababa", "bab"}), (Outcome{"", true}));
  EXPECT_EQ(Feed({"aa"}, {"baaa"}), (Outcome{"b", true}));
  // Two strings: the first to complete ends the text, the longer on a tie.
  EXPECT_EQ(Feed({"abcd", "bc"}, {"xabcd"}), (Outcome{"xa", true}));
  EXPECT_EQ(Feed({"bcd", "abcd"}, {"xab", "cd"}), (Outcome{"x", true}));
  EXPECT_EQ(Feed({"cd", "abc"}, {"abcd"}), (Outcome{"", true}));
}

TEST(StopCheckerTest, RandomTextsAndCutsMatchBruteForce) {
  std::mt19937 gen(17);
  const std::vector<std::string> alphabet = {"a", "b", "\xC3\xB6"};
  auto random_text = [&](int max_chars) {
    std::string s;
    const int n = 1 + static_cast<int>(gen() % max_chars);
    for (int i = 0; i < n; ++i) s += alphabet[gen() % alphabet.size()];
    return s;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::string> stop;
    for (int i = 0, n = 1 + gen() % 3; i < n; ++i) stop.push_back(random_text(4));
    const std::string text = random_text(14);
    std::vector<std::string> tokens;
    for (size_t at = 0; at < text.size();) {
      const size_t len = 1 + gen() % 4;
      tokens.push_back(text.substr(at, len));
      at += len;
    }
    ASSERT_EQ(Feed(stop, tokens), Expected(stop, text)) << "trial " << trial << " text " << text;
  }
}

TEST(StopCheckerTest, StopStringsCompletingBeforeMinTokensAreText) {
  EXPECT_EQ(Feed({"x"}, {"x", "y", "x", "z"}, 3), (Outcome{"xy", true}));
  // Started before min_tokens, completed at it: that one counts.
  EXPECT_EQ(Feed({"ab"}, {"a", "b"}, 2), (Outcome{"", true}));
  EXPECT_EQ(Feed({"ab"}, {"ab", "c"}, 2), (Outcome{"abc", false}));
}

}  // namespace
}  // namespace attnserve
