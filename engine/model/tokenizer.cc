// Byte-level BPE matching llama.cpp (llama-vocab.cpp, unicode.cpp) token for
// token: special tokens are split out first (longest first), each remaining
// fragment is decoded leniently (an invalid byte becomes U+FFFD, as llama.cpp
// does), split by the pre-tokenizer's regexes in turn, and each piece is
// merged by rank.
#include "engine/model/tokenizer.h"

#include <algorithm>
#include <array>
#include <numeric>
#include <queue>
#include <utility>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace attnserve {
namespace {

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
constexpr int64_t kTypeUnknown = 2;
constexpr int64_t kTypeControl = 3;
constexpr int64_t kTypeUserDefined = 4;
constexpr int64_t kTypeByte = 6;

// llama.cpp marks these end-of-generation by their text, whatever the metadata
// says (EOG list plus the FIM repo/separator/pad tokens).
constexpr std::string_view kEogTexts[] = {
    "<|eot_id|>", "<|im_end|>",      "<|end|>",      "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
    "<EOT>",      "<|end_of_text|>", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>",    "<REPO>",
    "<reponame>", "<|file_sep|>",    "<|fim_pad|>",  "<fim-pad>",     "<fim_pad>",     "<PAD>"};

// Character classes as llama.cpp's Unicode 15.1 tables have them. \s is
// Unicode White_Space (PCRE2 10.42's \s lacks U+0085); letters, numbers and
// punctuation add what Unicode 15.0/15.1 assigned after PCRE2 10.42's Unicode
// 14 (CJK extensions H and I, Kawi, Nag Mundari, ...). Newly assigned marks
// and symbols need nothing: unassigned codepoints fall in the same class.
#define WS "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define LETTER                                                                                          \
  "\\p{L}\\x{1123F}\\x{11240}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}\\x{13441}-\\x{13446}" \
  "\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{2B739}\\x{2EBF0}-\\x{2EE5D}"      \
  "\\x{31350}-\\x{323AF}"
#define NUMBER "\\p{N}\\x{11F50}-\\x{11F59}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}"
#define PUNCT "\\p{P}\\x{11B00}-\\x{11B09}\\x{11F43}-\\x{11F4F}"
constexpr char kGpt2Regex[] = "'s|'t|'re|'ve|'m|'ll|'d| ?[" LETTER "]+| ?[" NUMBER "]+| ?[^" WS LETTER NUMBER "]+|[" WS
                              "]+(?![^" WS "])|[" WS "]+";
constexpr char kLlama3Regex[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n" LETTER NUMBER "]?[" LETTER "]+|[" NUMBER
    "]{1,3}| ?[^" WS LETTER NUMBER "]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+";
constexpr char kDigitRegex[] = "[" NUMBER "]";
constexpr char kNumbersRegex[] = "[" NUMBER "]+";
constexpr char kPunctuationRegex[] = "[" PUNCT "\\$\\+<=>\\^~\\|]+";
#undef WS
#undef LETTER
#undef NUMBER
#undef PUNCT

struct PreTokenizerSpec {
  std::vector<std::string_view> names;  // tokenizer.ggml.pre values
  std::vector<const char*> regexes;     // applied in turn, each inside the previous one's pieces
  bool ignore_merges = false;           // a piece that is a whole token is not merged
  bool add_bos = false;                 // default when add_bos_token is absent
};

// The pre-tokenizers of llama.cpp whose regexes are supported here.
const std::vector<PreTokenizerSpec>& PreTokenizerSpecs() {
  static const auto* specs = new std::vector<PreTokenizerSpec>{
      {{"default"}, {kPunctuationRegex, kGpt2Regex, kNumbersRegex, "[0-9][0-9][0-9]"}},
      {{"gpt-2", "phi-2", "mpt", "olmo", "jais"}, {kGpt2Regex}},
      {{"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"}, {kDigitRegex, kGpt2Regex}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3"}, {kLlama3Regex}, true, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3Regex}},
  };
  return *specs;
}

struct Regex {
  explicit Regex(pcre2_code* c) : code(c) {}
  Regex(Regex&& other) noexcept : code(std::exchange(other.code, nullptr)) {}
  ~Regex() { pcre2_code_free(code); }
  pcre2_code* code;
};

absl::StatusOr<Regex> CompileRegex(const char* pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InternalError(
        absl::StrCat("pre-tokenizer regex does not compile at ", offset, ": ", reinterpret_cast<const char*>(message)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // without JIT the interpreter still works
  return Regex(code);
}

size_t Utf8Length(uint32_t cpt) { return cpt < 0x80 ? 1 : cpt < 0x800 ? 2 : cpt < 0x10000 ? 3 : 4; }

void AppendUtf8(uint32_t cpt, std::string& out) {
  constexpr uint8_t kLead[] = {0, 0, 0xC0, 0xE0, 0xF0};
  const size_t n = Utf8Length(cpt);
  if (n == 1) {
    out += static_cast<char>(cpt);
    return;
  }
  out += static_cast<char>(kLead[n] | (cpt >> (6 * (n - 1))));
  for (size_t i = n - 1; i-- > 0;) out += static_cast<char>(0x80 | ((cpt >> (6 * i)) & 0x3F));
}

constexpr uint32_t kReplacement = 0xFFFD;

struct Codepoint {
  uint32_t cpt;
  uint32_t len;  // bytes consumed
};

// llama.cpp's lenient decoder: it checks only the lead byte and that enough
// continuation bytes follow, so overlong forms and surrogates decode; anything
// else consumes one byte as U+FFFD. Codepoints past U+10FFFF (which make
// llama.cpp abort) are treated as invalid bytes too.
Codepoint DecodeLenient(std::string_view s, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[pos + i]); };
  const auto continuation = [&](size_t i) { return pos + i < s.size() && (byte(i) & 0xC0) == 0x80; };
  const uint8_t b = byte(0);
  if (b < 0x80) return {b, 1};
  if ((b & 0xE0) == 0xC0 && continuation(1)) return {((b & 0x1Fu) << 6) | (byte(1) & 0x3Fu), 2};
  if ((b & 0xF0) == 0xE0 && continuation(1) && continuation(2)) {
    return {((b & 0x0Fu) << 12) | ((byte(1) & 0x3Fu) << 6) | (byte(2) & 0x3Fu), 3};
  }
  if ((b & 0xF8) == 0xF0 && continuation(1) && continuation(2) && continuation(3)) {
    const uint32_t cpt = ((b & 0x07u) << 18) | ((byte(1) & 0x3Fu) << 12) | ((byte(2) & 0x3Fu) << 6) | (byte(3) & 0x3Fu);
    if (cpt <= 0x10FFFF) return {cpt, 4};
  }
  return {kReplacement, 1};
}

// A fragment as the pre-tokenizer and BPE see it. For valid UTF-8 (the usual
// case) all views alias the input and no map is built.
struct CleanText {
  std::string_view bpe;            // re-encoded codepoints: the bytes BPE merges
  std::string_view match;          // the same with surrogates as U+FFFD, valid UTF-8 for PCRE2
  std::vector<uint32_t> to_input;  // bpe offset -> input offset; empty for identity
  std::string bpe_storage, match_storage;
};

void Clean(std::string_view input, CleanText& out) {
  size_t pos = 0;
  while (pos < input.size()) {
    const Codepoint c = DecodeLenient(input, pos);
    const bool exact = c.cpt != kReplacement || c.len == 3;  // an input U+FFFD is itself
    if (!exact || Utf8Length(c.cpt) != c.len || (c.cpt >= 0xD800 && c.cpt <= 0xDFFF)) break;
    pos += c.len;
  }
  if (pos == input.size()) {
    out.bpe = out.match = input;
    return;
  }
  // A byte inside a codepoint whose encoding changed maps to the end of that
  // codepoint's input bytes, so token ranges stay contiguous and ordered.
  out.bpe_storage.assign(input.substr(0, pos));
  out.match_storage = out.bpe_storage;
  out.to_input.resize(pos);
  std::iota(out.to_input.begin(), out.to_input.end(), 0u);
  while (pos < input.size()) {
    const Codepoint c = DecodeLenient(input, pos);
    const size_t before = out.bpe_storage.size();
    AppendUtf8(c.cpt, out.bpe_storage);
    const bool surrogate = c.cpt >= 0xD800 && c.cpt <= 0xDFFF;
    AppendUtf8(surrogate ? kReplacement : c.cpt, out.match_storage);
    const size_t written = out.bpe_storage.size() - before;
    for (size_t i = 0; i < written; ++i) {
      out.to_input.push_back(static_cast<uint32_t>(i == 0 ? pos : written == c.len ? pos + i : pos + c.len));
    }
    pos += c.len;
  }
  out.to_input.push_back(static_cast<uint32_t>(input.size()));
  out.bpe = out.bpe_storage;
  out.match = out.match_storage;
}

// GPT-2's printable stand-in for each byte, so that merges and token texts
// never contain whitespace or control characters.
struct ByteMap {
  std::array<std::string, 256> text;            // byte -> UTF-8 of its stand-in
  absl::flat_hash_map<uint32_t, uint8_t> byte;  // stand-in codepoint -> byte
};

const ByteMap& Gpt2ByteMap() {
  static const ByteMap* map = [] {
    auto* m = new ByteMap;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cpt = printable ? b : next++;
      AppendUtf8(cpt, m->text[b]);
      m->byte[cpt] = static_cast<uint8_t>(b);
    }
    return m;
  }();
  return *map;
}

// The bytes a normal token's text stands for. Characters outside the byte
// map are kept as they are.
std::string DecodeGpt2Text(std::string_view text) {
  const ByteMap& map = Gpt2ByteMap();
  std::string out;
  for (size_t pos = 0; pos < text.size();) {
    const Codepoint c = DecodeLenient(text, pos);
    const auto it = map.byte.find(c.cpt);
    if (it != map.byte.end()) {
      out += static_cast<char>(it->second);
    } else {
      out.append(text.substr(pos, c.len));
    }
    pos += c.len;
  }
  return out;
}

struct Merge {
  int32_t rank;
  int32_t result;  // symbol id of the merged text
};

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct Emitted {
  int32_t id;
  uint32_t end;  // where its bytes end in the cleaned fragment
};

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> texts;  // GGUF token texts
  std::vector<std::string> bytes;  // what each token decodes to
  std::vector<int64_t> types;
  std::vector<int32_t> specials;  // split out before BPE, longest text first
  absl::flat_hash_set<int32_t> eog;
  // Symbols are vocabulary ids, then merge texts that are not tokens.
  absl::flat_hash_map<std::string, int32_t> symbol_ids;
  std::vector<std::string> extra_symbols;
  absl::flat_hash_map<uint64_t, Merge> merges;
  std::array<int32_t, 256> byte_symbols{};
  std::vector<Regex> regexes;
  bool ignore_merges = false;
  bool add_bos = false, add_eos = false;
  int32_t bos = -1, eos = -1;

  int32_t vocab() const { return static_cast<int32_t>(texts.size()); }

  int32_t Intern(const std::string& text) {
    const auto [it, inserted] = symbol_ids.try_emplace(text, vocab() + static_cast<int32_t>(extra_symbols.size()));
    if (inserted) extra_symbols.push_back(text);
    return it->second;
  }

  std::vector<std::pair<uint32_t, uint32_t>> Split(std::string_view text) const;
  void Bpe(std::string_view piece, uint32_t offset, std::vector<Emitted>& out) const;
  void EncodeText(std::string_view text, std::vector<int32_t>& ids, std::vector<TokenOffset>* offsets,
                  int32_t base) const;
};

// Pieces as [begin, end) byte ranges. Each regex runs on one piece at a time,
// so lookaheads stop at the piece's end, and text between matches is a piece
// of its own, as in llama.cpp's unicode_regex_split.
std::vector<std::pair<uint32_t, uint32_t>> Tokenizer::Impl::Split(std::string_view text) const {
  std::vector<std::pair<uint32_t, uint32_t>> pieces{{0, static_cast<uint32_t>(text.size())}}, next;
  for (const Regex& regex : regexes) {
    pcre2_match_data* data = pcre2_match_data_create_from_pattern(regex.code, nullptr);
    next.clear();
    for (const auto& [begin, end] : pieces) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + begin);
      const uint32_t length = end - begin;
      uint32_t pos = 0, done = 0;
      while (pos < length) {
        int rc = pcre2_match(regex.code, subject, length, pos, PCRE2_NO_UTF_CHECK, data, nullptr);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
          rc = pcre2_match(regex.code, subject, length, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, data, nullptr);
        }
        if (rc < 0) break;  // no further match: the rest is one piece
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
        const auto m_begin = static_cast<uint32_t>(ovector[0]), m_end = static_cast<uint32_t>(ovector[1]);
        if (m_begin > done) next.emplace_back(begin + done, begin + m_begin);
        if (m_end > m_begin) next.emplace_back(begin + m_begin, begin + m_end);
        done = m_end;
        pos = m_end > m_begin ? m_end : m_end + 1;
        while (pos < length && (static_cast<uint8_t>(subject[pos]) & 0xC0) == 0x80) ++pos;
      }
      if (done < length) next.emplace_back(begin + done, end);
    }
    pcre2_match_data_free(data);
    pieces.swap(next);
  }
  return pieces;
}

// Merges the lowest-ranked adjacent pair first (leftmost among equal ranks),
// as llama.cpp's llm_tokenizer_bpe_session does.
void Tokenizer::Impl::Bpe(std::string_view piece, uint32_t offset, std::vector<Emitted>& out) const {
  if (ignore_merges) {
    std::string whole;
    for (const char c : piece) whole += Gpt2ByteMap().text[static_cast<uint8_t>(c)];
    const auto it = symbol_ids.find(whole);
    if (it != symbol_ids.end() && it->second < vocab()) {
      out.push_back({it->second, offset + static_cast<uint32_t>(piece.size())});
      return;
    }
  }
  struct Symbol {
    int32_t id, prev, next;
    uint32_t begin, end;
  };
  struct Candidate {
    int32_t rank, left, right, left_id, right_id, result;
    bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::vector<Symbol> symbols(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) {
    symbols[i] = {byte_symbols[static_cast<uint8_t>(piece[i])], static_cast<int32_t>(i) - 1,
                  i + 1 < piece.size() ? static_cast<int32_t>(i) + 1 : -1, static_cast<uint32_t>(i),
                  static_cast<uint32_t>(i) + 1};
  }
  std::priority_queue<Candidate> queue;
  const auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const auto it = merges.find(PairKey(symbols[left].id, symbols[right].id));
    if (it == merges.end()) return;
    queue.push({it->second.rank, left, right, symbols[left].id, symbols[right].id, it->second.result});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i, i + 1);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    // Stale when either side has merged since: symbols only grow rightwards.
    if (left.end == left.begin || right.end == right.begin || left.id != c.left_id || right.id != c.right_id) continue;
    left.id = c.result;
    left.end = right.end;
    left.next = right.next;
    right.end = right.begin;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    consider(left.prev, c.left);
    consider(c.left, left.next);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    if (s.id < vocab()) {
      out.push_back({s.id, offset + s.end});
      continue;
    }
    // Not a token (a byte or merge result missing from the vocabulary):
    // llama.cpp falls back to the single-byte tokens of the symbol's text.
    for (const char ch : extra_symbols[s.id - vocab()]) {
      const auto it = symbol_ids.find(std::string(1, ch));
      if (it != symbol_ids.end() && it->second < vocab()) out.push_back({it->second, offset + s.end});
    }
  }
}

// Pre-tokenizes and merges one fragment without special tokens; `base` is its
// offset in the caller's text.
void Tokenizer::Impl::EncodeText(std::string_view text, std::vector<int32_t>& ids, std::vector<TokenOffset>* offsets,
                                 int32_t base) const {
  CleanText clean;
  Clean(text, clean);
  std::vector<Emitted> emitted;
  for (const auto& [begin, end] : Split(clean.match)) Bpe(clean.bpe.substr(begin, end - begin), begin, emitted);
  // A token's range starts where the previous one ended: bytes the vocabulary
  // cannot represent yield no token (as in llama.cpp) and join the next
  // token's range, or the last one's, so ranges tile the text.
  const auto map = [&](uint32_t p) {
    return base + static_cast<int32_t>(clean.to_input.empty() ? p : clean.to_input[p]);
  };
  for (size_t i = 0; i < emitted.size(); ++i) {
    ids.push_back(emitted[i].id);
    if (offsets == nullptr) continue;
    const uint32_t begin = i == 0 ? 0 : emitted[i - 1].end;
    const uint32_t end = i + 1 == emitted.size() ? static_cast<uint32_t>(clean.bpe.size()) : emitted[i].end;
    offsets->push_back({map(begin), map(end)});
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  absl::StatusOr<std::string> model = gguf.GetString("tokenizer.ggml.model");
  if (!model.ok())
    return absl::InvalidArgumentError(absl::StrCat("no tokenizer in the GGUF: ", model.status().message()));
  if (*model != "gpt2") {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer model '", *model, "' is not supported (only byte-level BPE, 'gpt2')"));
  }
  auto impl = std::make_unique<Impl>();
  const std::string pre =
      gguf.HasKey("tokenizer.ggml.pre") ? gguf.GetString("tokenizer.ggml.pre").value_or("") : std::string("default");
  const PreTokenizerSpec* spec = nullptr;
  for (const PreTokenizerSpec& s : PreTokenizerSpecs()) {
    if (std::find(s.names.begin(), s.names.end(), pre) != s.names.end()) spec = &s;
  }
  if (spec == nullptr) return absl::UnimplementedError(absl::StrCat("pre-tokenizer '", pre, "' is not supported"));
  for (const char* pattern : spec->regexes) {
    ATTN_ASSIGN_OR_RETURN(Regex regex, CompileRegex(pattern));
    impl->regexes.push_back(std::move(regex));
  }
  impl->ignore_merges = spec->ignore_merges;

  ATTN_ASSIGN_OR_RETURN(impl->texts, gguf.GetStringArray("tokenizer.ggml.tokens"));
  const int32_t n = impl->vocab();
  if (n == 0) return absl::InvalidArgumentError("tokenizer.ggml.tokens is empty");
  if (gguf.HasKey("tokenizer.ggml.token_type")) {
    ATTN_ASSIGN_OR_RETURN(impl->types, gguf.GetIntArray("tokenizer.ggml.token_type"));
    if (static_cast<int32_t>(impl->types.size()) < n) {
      return absl::InvalidArgumentError("tokenizer.ggml.token_type is shorter than tokenizer.ggml.tokens");
    }
  }
  impl->types.resize(n, 1);
  impl->bytes.resize(n);
  for (int32_t id = 0; id < n; ++id) {
    std::string& text = impl->texts[id];
    if (text.empty()) text = absl::StrCat("[EMPTY_", id, "]");  // as llama.cpp names them
    if (!impl->symbol_ids.try_emplace(text, id).second) {
      return absl::InvalidArgumentError(absl::StrCat("token '", text, "' appears twice in the vocabulary"));
    }
    const int64_t type = impl->types[id];
    uint32_t byte = 0;
    if (type == kTypeControl || type == kTypeUnknown || type == kTypeUserDefined) {
      impl->bytes[id] = text;
    } else if (type == kTypeByte && text.size() == 6 && absl::SimpleHexAtoi(text.substr(3, 2), &byte)) {
      impl->bytes[id] = std::string(1, static_cast<char>(byte));  // "<0xAB>"
    } else {
      impl->bytes[id] = DecodeGpt2Text(text);
    }
  }
  for (int b = 0; b < 256; ++b) impl->byte_symbols[b] = impl->Intern(Gpt2ByteMap().text[b]);

  ATTN_ASSIGN_OR_RETURN(std::vector<std::string> merges, gguf.GetStringArray("tokenizer.ggml.merges"));
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& merge = merges[rank];
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos) continue;  // never matches a pair
    const int32_t left = impl->Intern(merge.substr(0, space));
    const int32_t right = impl->Intern(merge.substr(space + 1));
    const int32_t result = impl->Intern(merge.substr(0, space) + merge.substr(space + 1));
    impl->merges.try_emplace(PairKey(left, right), Merge{static_cast<int32_t>(rank), result});
  }

  // llama.cpp's defaults for a BPE vocabulary when the keys are absent.
  const auto special_id = [&](std::string_view key, int32_t fallback) -> absl::StatusOr<int32_t> {
    if (!gguf.HasKey(key)) return fallback < n ? fallback : -1;
    ATTN_ASSIGN_OR_RETURN(int64_t id, gguf.GetInt(key));
    if (id < 0 || id >= n)
      return absl::InvalidArgumentError(absl::StrCat(std::string(key), " = ", id, " is outside the vocabulary"));
    return static_cast<int32_t>(id);
  };
  ATTN_ASSIGN_OR_RETURN(impl->bos, special_id("tokenizer.ggml.bos_token_id", 11));
  ATTN_ASSIGN_OR_RETURN(impl->eos, special_id("tokenizer.ggml.eos_token_id", 11));
  ATTN_ASSIGN_OR_RETURN(const int32_t eot, special_id("tokenizer.ggml.eot_token_id", -1));
  ATTN_ASSIGN_OR_RETURN(const int32_t eom, special_id("tokenizer.ggml.eom_token_id", -1));
  impl->add_bos = gguf.HasKey("tokenizer.ggml.add_bos_token")
                      ? gguf.GetBool("tokenizer.ggml.add_bos_token").value_or(false)
                      : spec->add_bos;
  impl->add_eos = gguf.GetBool("tokenizer.ggml.add_eos_token").value_or(false);
  if ((impl->add_bos && impl->bos < 0) || (impl->add_eos && impl->eos < 0)) {
    return absl::InvalidArgumentError("the GGUF asks to add BOS/EOS but has no such token");
  }
  for (const int32_t id : {impl->eos, eot, eom}) {
    if (id >= 0) impl->eog.insert(id);
  }
  for (const std::string_view text : kEogTexts) {
    const auto it = impl->symbol_ids.find(std::string(text));
    if (it == impl->symbol_ids.end() || it->second >= n) continue;
    impl->eog.insert(it->second);
    if (impl->types[it->second] != kTypeUserDefined) impl->types[it->second] = kTypeControl;
  }
  for (int32_t id = 0; id < n; ++id) {
    const int64_t type = impl->types[id];
    if (type == kTypeControl || type == kTypeUnknown || type == kTypeUserDefined) impl->specials.push_back(id);
  }
  std::stable_sort(impl->specials.begin(), impl->specials.end(),
                   [&](int32_t a, int32_t b) { return impl->texts[a].size() > impl->texts[b].size(); });
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special, bool parse_special) const {
  return EncodeWithOffsets(text, add_special, parse_special, nullptr);
}

std::vector<int32_t> Tokenizer::EncodeWithOffsets(std::string_view text, bool add_special, bool parse_special,
                                                  std::vector<TokenOffset>* offsets) const {
  const Impl& impl = *impl_;
  std::vector<int32_t> ids;
  if (offsets != nullptr) offsets->clear();
  const auto emit = [&](int32_t id, int32_t begin, int32_t end) {
    ids.push_back(id);
    if (offsets != nullptr) offsets->push_back({begin, end});
  };
  if (add_special && impl.add_bos) emit(impl.bos, 0, 0);
  // Like llama.cpp's tokenizer_st_partition: each special token in turn (longest
  // first) cuts every remaining text fragment at each of its occurrences.
  struct Fragment {
    int32_t token;  // -1 for text
    size_t begin, end;
  };
  std::vector<Fragment> fragments, next;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  for (const int32_t special : impl.specials) {
    if (!parse_special && impl.types[special] != kTypeUserDefined) continue;
    const std::string& needle = impl.texts[special];
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t at = f.begin;
      for (size_t found; (found = text.substr(0, f.end).find(needle, at)) != std::string_view::npos;
           at = found + needle.size()) {
        if (found > at) next.push_back({-1, at, found});
        next.push_back({special, found, found + needle.size()});
      }
      if (at < f.end) next.push_back({-1, at, f.end});
    }
    fragments.swap(next);
  }
  for (const Fragment& f : fragments) {
    if (f.token >= 0) {
      emit(f.token, static_cast<int32_t>(f.begin), static_cast<int32_t>(f.end));
    } else {
      impl.EncodeText(text.substr(f.begin, f.end - f.begin), ids, offsets, static_cast<int32_t>(f.begin));
    }
  }
  if (add_special && impl.add_eos) emit(impl.eos, static_cast<int32_t>(text.size()), static_cast<int32_t>(text.size()));
  return ids;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool render_special) const {
  std::string out;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    const int64_t type = impl_->types[id];
    if (!render_special && (type == kTypeControl || type == kTypeUnknown)) continue;
    out += impl_->bytes[id];
  }
  return out;
}

std::string Tokenizer::TokenBytes(int32_t id) const {
  return id >= 0 && id < vocab_size() ? impl_->bytes[id] : std::string();
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab(); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::IsEndOfGeneration(int32_t id) const { return impl_->eog.contains(id); }

absl::StatusOr<int32_t> Tokenizer::TokenId(std::string_view text) const {
  const auto it = impl_->symbol_ids.find(std::string(text));
  if (it == impl_->symbol_ids.end() || it->second >= vocab_size()) {
    return absl::NotFoundError(absl::StrCat("no token '", std::string(text), "' in the vocabulary"));
  }
  return it->second;
}

}  // namespace attnserve
