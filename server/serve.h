// attnserve serve: the gRPC server subcommand.
#pragma once

namespace attnserve {

// Reads its absl flags (already parsed), serves until SIGTERM or SIGINT,
// drains and returns the process exit code (0 after a clean drain).
int RunServe();

}  // namespace attnserve
