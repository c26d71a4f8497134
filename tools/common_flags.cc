#include "tools/common_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, model, "models/SmolLM2-135M-Instruct.Q4_1.gguf", "Path of the GGUF model file.");
ABSL_FLAG(int, threads, 2, "CPU threads for the model forward.");
ABSL_FLAG(std::string, text_file, "", "File of text to score (score) or to profile the heads on (profile).");
ABSL_FLAG(int, max_tokens, 128,
          "generate: tokens to generate at most. profile: tokens of --text_file to profile (2048 unless given).");
ABSL_FLAG(bool, json, false, "Print the result as one JSON object (generate: {token_ids, text, finish_reason}; score: {token_ids, token_logprobs, argmax_ids, perplexity}).");
