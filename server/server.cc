#include "server/server.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/policy_mapping.h"

namespace attnserve {
namespace {

// After the engine is drained, how long clients get to read the last
// messages before their calls are cancelled.
constexpr auto kShutdownGrace = std::chrono::seconds(5);

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(Engine& engine, Metrics* metrics, const ServerOptions& options) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port: ", options.port, " is outside [0, 65535]"));
  }
  for (const auto& [name, profile] : options.profiles) {
    ATTN_RETURN_IF_ERROR(CheckProfileMatchesModel(profile, engine.model().config, absl::StrCat("profile ", name)));
  }
  if (absl::Status s = CheckDefaultAttention(options.default_attention, engine.model().config, options.profiles);
      !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("--default-attention: ", s.message()));
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::unique_ptr<Server> server(new Server(engine, metrics, options));
  const std::string host = options.host.find(':') != std::string::npos ? absl::StrCat("[", options.host, "]")
                                                                        : options.host;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(host, ":", options.port), grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(&server->service_);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", options.port));
  }
  // A backend that failed for good turns health NOT_SERVING (new calls get
  // the engine's UNAVAILABLE), and the owner hears of it.
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  engine.SetHealthListener([health, failed = options.on_backend_failure](const absl::Status& status) {
    health->SetServingStatus(false);
    if (failed) failed(status);
  });
  return server;
}

Server::~Server() {
  serving_.engine.SetHealthListener(nullptr);
  if (stopped_) return;
  serving_.draining = true;
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  serving_.WaitForBackgroundCalls();
}

void Server::Drain(absl::Duration timeout) {
  serving_.engine.SetHealthListener(nullptr);
  serving_.draining = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  serving_.engine.Drain(timeout);
  server_->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  server_->Wait();
  serving_.WaitForBackgroundCalls();
  stopped_ = true;
}

}  // namespace attnserve
