#include "server/generate_reactor.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/core/output_stream.h"
#include "server/grpc_status.h"
#include "server/request_mapping.h"

namespace attnserve {
namespace {

class GenerateReactor;

// The engine's on_ready callback may fire after the call is over (an abort
// delta racing the client's cancel); it reaches the reactor only through
// this link, which OnDone cuts before the reactor is deleted.
struct ReactorLink {
  std::mutex mu;
  GenerateReactor* reactor = nullptr;
};

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kNone:
      break;
  }
  return "none";
}

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(ServingContext& serving, grpc::CallbackServerContext* context, const v1::GenerateRequest& request)
      : serving_(serving), arrival_(absl::Now()), deadline_(DeadlineOf(*context)), link_(std::make_shared<ReactorLink>()) {
    link_->reactor = this;
    record_.method = "Generate";
    record_.request_id = request.request_id().empty() ? serving.NewRequestId() : request.request_id();
    if (absl::Status s = Submit(request); !s.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        finishing_ = true;
        SetStatus(s);
      }
      Finish(ToGrpcStatus(s));
    }
  }

  // Engine thread (through the link) or a gRPC thread after a write: starts
  // the next write, or finishes the call once every completion is written.
  void WriteNext() {
    const v1::GenerateResponse* next = nullptr;
    std::optional<grpc::Status> finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (writing_ || finishing_) return;
      if (client_gone_) {
        finishing_ = true;
        SetStatus(GoneReason());
      } else {
        if (queue_.empty()) {
          for (GenerationDelta& delta : out_->Take()) {
            Account(delta);
            queue_.push_back(ToGenerateResponse(std::move(delta), record_.request_id));
          }
        }
        if (!queue_.empty()) {
          writing_ = true;
          next = &queue_.front();  // a deque keeps it in place while later messages are added
        } else if (finished_ == completions_) {
          finishing_ = true;
        }
      }
      if (finishing_) finish = ToGrpcStatus(status_);
    }
    if (next != nullptr) {
      StartWrite(next);
    } else if (finish) {
      Finish(*finish);
    }
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      queue_.pop_front();
      if (!ok) client_gone_ = true;
    }
    if (!ok) serving_.engine.Abort(handle_, GoneReason());
    WriteNext();
  }

  // Client cancellation and an expired deadline both end up here; the
  // engine drops the sequence and frees its pages.
  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      client_gone_ = true;
    }
    if (submitted_) serving_.engine.Abort(handle_, GoneReason());
    WriteNext();
  }

  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      link_->reactor = nullptr;
    }
    record_.e2e_seconds = absl::ToDoubleSeconds(absl::Now() - arrival_);
    serving_.RecordFinished(record_);
    delete this;
  }

 private:
  absl::Status Submit(const v1::GenerateRequest& request) {
    if (serving_.draining.load()) return absl::UnavailableError("the server is draining");
    absl::StatusOr<GenerationRequest> r =
        ToGenerationRequest(request, serving_.engine.model(), serving_.default_attention, serving_.profiles);
    if (!r.ok()) return r.status();
    r->request_id = record_.request_id;
    r->arrival = arrival_;
    r->deadline = deadline_;
    completions_ = std::max(1, r->sampling.n);
    record_.prompt_tokens = static_cast<int32_t>(r->prompt_ids.size());
    out_ = std::make_shared<OutputStream>([link = link_] {
      std::lock_guard<std::mutex> lock(link->mu);
      if (link->reactor != nullptr) link->reactor->WriteNext();
    });
    absl::StatusOr<uint64_t> handle = serving_.engine.Submit(*std::move(r), out_);
    if (!handle.ok()) return handle.status();
    handle_ = *handle;
    submitted_ = true;
    return absl::OkStatus();
  }

  absl::Status GoneReason() const {
    if (absl::Now() >= deadline_) return absl::DeadlineExceededError("the request's deadline passed");
    return absl::CancelledError("the client cancelled the request");
  }

  // The first error decides the call's status.
  void SetStatus(const absl::Status& s) {
    if (!status_.ok() || s.ok()) return;
    status_ = s;
    record_.code = s.code();
    record_.error = std::string(s.message());
  }

  // Usage and finish reasons of final deltas, for the log line.
  void Account(const GenerationDelta& delta) {
    if (delta.finish_reason == FinishReason::kNone && delta.error.ok()) return;
    ++finished_;
    SetStatus(delta.error);
    record_.prompt_tokens = delta.prompt_tokens;
    record_.completion_tokens += delta.completion_tokens;
    if (!record_.finish_reason.empty()) record_.finish_reason += ',';
    record_.finish_reason += FinishReasonName(delta.error.ok() ? delta.finish_reason : FinishReason::kAbort);
    if (delta.index == 0) record_.ttft_seconds = delta.time_to_first_token_seconds;
  }

  ServingContext& serving_;
  const absl::Time arrival_;
  const absl::Time deadline_;
  std::shared_ptr<ReactorLink> link_;
  std::shared_ptr<OutputStream> out_;
  uint64_t handle_ = 0;     // set before the call can be cancelled
  bool submitted_ = false;
  int32_t completions_ = 1;

  std::mutex mu_;
  std::deque<v1::GenerateResponse> queue_;  // front: the message being written
  bool writing_ = false;
  bool finishing_ = false;
  bool client_gone_ = false;
  int32_t finished_ = 0;  // completions whose final delta was taken
  absl::Status status_;
  RequestRecord record_;
};

}  // namespace

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerate(ServingContext& serving,
                                                              grpc::CallbackServerContext* context,
                                                              const v1::GenerateRequest& request) {
  return new GenerateReactor(serving, context, request);
}

}  // namespace attnserve
