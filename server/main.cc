// attnserve: one binary, one subcommand per job.
#include <algorithm>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "server/serve.h"
#include "tools/commands.h"
#include "tools/common_flags.h"

namespace {

constexpr char kUsage[] =
    "usage: attnserve <command> [flags]\n"
    "commands:\n"
    "  generate   complete a prompt on the CPU (--model --prompt --max_tokens --temperature ...)\n"
    "  score      per-token logprobs and perplexity of a text (--model --text_file ...)\n"
    "  tokenize   encode texts or render chats with the model's tokenizer (--model --strings_file | --chat_file)\n"
    "  profile    per-head attention profile over a text, for serve --profile_dir (--model --text_file --out ...)\n"
    "  serve      the gRPC server (--model --port --metrics_port --max_num_seqs --kv_cache_memory ...)\n"
    "run 'attnserve <command> --help' for its flags";

// Flags may be spelled with hyphens (--max-tokens) or underscores.
std::string NormalizeFlag(std::string_view arg) {
  std::string out(arg);
  if (out.rfind("--", 0) != 0) return out;
  const size_t end = std::min(out.find('='), out.size());
  for (size_t i = 2; i < end; ++i) {
    if (out[i] == '-') out[i] = '_';
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "%s\n", kUsage);
    return 2;
  }
  const std::string_view command = argv[1];
  // The subcommand is dropped so absl sees only flags.
  std::vector<std::string> normalized;
  for (int i = 2; i < argc; ++i) normalized.push_back(NormalizeFlag(argv[i]));
  std::vector<char*> args{argv[0]};
  for (std::string& a : normalized) args.push_back(a.data());
  if (command == "profile") absl::SetFlag(&FLAGS_max_tokens, attnserve::kProfileDefaultMaxTokens);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (command == "generate") return attnserve::RunGenerate();
  if (command == "score") return attnserve::RunScore();
  if (command == "tokenize") return attnserve::RunTokenize();
  if (command == "profile") return attnserve::RunProfile();
  if (command == "serve") return attnserve::RunServe();
  std::fprintf(stderr, "unknown command '%.*s'\n%s\n", static_cast<int>(command.size()), command.data(), kUsage);
  return 2;
}
