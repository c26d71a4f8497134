// Entry points of the attnserve subcommands that are not the server. Each
// reads its absl flags (already parsed) and returns the process exit code.
#pragma once

namespace attnserve {

int RunGenerate();
int RunScore();
int RunTokenize();
int RunProfile();

// `profile` reads --max_tokens as text tokens, with a default of its own.
inline constexpr int kProfileDefaultMaxTokens = 2048;

}  // namespace attnserve
