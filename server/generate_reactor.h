// The streaming Generate call: one reactor per stream, fed by the engine's
// OutputStream. The engine never waits for the client: while a write is in
// flight, new deltas pile up merged in the OutputStream, and the next write
// carries all of them (one message per completion).
#pragma once

#include "attnserve/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/serving_context.h"

namespace attnserve {

// Validates and submits `request`; the returned reactor owns itself and
// finishes the call (at once, with the error, for a rejected request).
grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerate(ServingContext& serving,
                                                              grpc::CallbackServerContext* context,
                                                              const v1::GenerateRequest& request);

// The call's deadline as the engine takes it.
absl::Time DeadlineOf(const grpc::CallbackServerContext& context);

}  // namespace attnserve
