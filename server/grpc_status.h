// The one place where engine statuses become gRPC statuses.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace attnserve {

// absl and gRPC share google.rpc.Code numbering; the message is kept as is.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace attnserve
