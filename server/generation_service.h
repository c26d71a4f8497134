// attnserve.v1.Generation on the gRPC callback API.
#pragma once

#include "attnserve/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/serving_context.h"

namespace attnserve {

inline constexpr char kServerVersion[] = "0.1.0";

class GenerationService final : public v1::Generation::CallbackService {
 public:
  explicit GenerationService(ServingContext& serving) : serving_(serving) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request) override;
  // Runs on its own thread: the engine computes it between generation steps.
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context, const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context, const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context, const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request, v1::ServerInfo* response) override;

 private:
  ServingContext& serving_;
};

}  // namespace attnserve
