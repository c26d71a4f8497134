// Flags shared by several subcommands.
#pragma once

#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(int, threads);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(std::string, text_file);
ABSL_DECLARE_FLAG(int, max_tokens);
