// The gRPC server around an engine: the Generation service, grpc.health.v1
// and server reflection on one port.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/core/engine.h"
#include "engine/policy/head_profile.h"
#include "grpcpp/grpcpp.h"
#include "server/generation_service.h"
#include "server/serving_context.h"

namespace attnserve {

struct ServerOptions {
  std::string host = "0.0.0.0";
  int port = 50051;  // 0: an ephemeral port, see Server::port()
  // --default-attention: the policy of requests that bring none.
  v1::AttentionPolicy default_attention;
  // --profile-dir: the head profiles policies may name, made for the engine's model.
  HeadProfiles profiles;
  // Called once, on an engine thread, when the backend has failed for good
  // (a GPU fault): health has turned NOT_SERVING and new calls get
  // UNAVAILABLE. `serve` exits then, so that the process's supervisor
  // (Kubernetes, a compose restart policy) starts a healthy one.
  std::function<void(const absl::Status&)> on_backend_failure;
};

class Server {
 public:
  // `engine` (and `metrics`, which may be null) must outlive the server.
  // INVALID_ARGUMENT or UNIMPLEMENTED "--default-attention: attention.<field>:
  // ..." for a default policy that could not serve every request;
  // INVALID_ARGUMENT for a profile made for a model of another shape.
  static absl::StatusOr<std::unique_ptr<Server>> Start(Engine& engine, Metrics* metrics, const ServerOptions& options);
  // Stops at once if Drain has not: calls in flight are cancelled.
  ~Server();

  int port() const { return port_; }

  // Graceful stop: health turns NOT_SERVING and new Generate/Score calls get
  // UNAVAILABLE; the engine finishes what it holds (aborting what is left
  // after `timeout`); then gRPC stops once the last responses are written.
  void Drain(absl::Duration timeout);

 private:
  Server(Engine& engine, Metrics* metrics, const ServerOptions& options)
      : serving_(engine, metrics, options.default_attention, options.profiles), service_(serving_) {}

  ServingContext serving_;
  GenerationService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool stopped_ = false;
};

}  // namespace attnserve
