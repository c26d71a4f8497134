// A minimal attnserve client: streams one completion and prints its text as
// it arrives, then the usage on stderr.
//
//   build/examples/attnserve_client --target 127.0.0.1:50051 --prompt "What is 2+2?" --chat
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "attnserve/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address.");
ABSL_FLAG(std::string, prompt, "Write a haiku about the sea.", "Prompt text.");
ABSL_FLAG(int, max_tokens, 64, "Tokens to generate at most.");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature; 0 is greedy.");
ABSL_FLAG(bool, chat, false, "Send the prompt as one user message (the server applies the chat template).");
ABSL_FLAG(int, timeout_s, 120, "Deadline of the call in seconds.");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  namespace v1 = attnserve::v1;
  std::unique_ptr<v1::Generation::Stub> stub =
      v1::Generation::NewStub(grpc::CreateChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials()));

  v1::GenerateRequest request;
  if (absl::GetFlag(FLAGS_chat)) {
    v1::ChatMessage* message = request.mutable_messages()->add_messages();
    message->set_role("user");
    message->set_content(absl::GetFlag(FLAGS_prompt));
  } else {
    request.set_prompt(absl::GetFlag(FLAGS_prompt));
  }
  request.mutable_sampling()->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  request.mutable_sampling()->set_temperature(absl::GetFlag(FLAGS_temperature));

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_timeout_s)));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> stream = stub->Generate(&context, request);
  v1::GenerateResponse response;
  while (stream->Read(&response)) {
    std::fputs(response.text().c_str(), stdout);
    std::fflush(stdout);
    if (response.finished()) {
      std::fprintf(stderr, "\n[%s] finish_reason=%s prompt_tokens=%u completion_tokens=%u ttft=%.3fs\n",
                   response.request_id().c_str(), v1::FinishReason_Name(response.finish_reason()).c_str(),
                   response.usage().prompt_tokens(), response.usage().completion_tokens(),
                   response.metrics().time_to_first_token_seconds());
    }
  }
  const grpc::Status status = stream->Finish();
  if (!status.ok()) {
    std::fprintf(stderr, "error: %d %s\n", static_cast<int>(status.error_code()), status.error_message().c_str());
    return 1;
  }
  return 0;
}
