#include "server/serve.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/core/engine.h"
#include "engine/metrics/metrics.h"
#include "engine/model/model.h"
#include "engine/model/model_shapes.h"
#include "engine/policy/head_profile.h"
#include "server/byte_size.h"
#include "server/policy_mapping.h"
#include "server/server.h"
#include "tools/common_flags.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "Address the gRPC server listens on.");
ABSL_FLAG(int, port, 50051, "gRPC port; 0 picks a free one (printed at start).");
ABSL_FLAG(int, metrics_port, 9400, "Prometheus /metrics port; 0 picks a free one, -1 turns it off.");
ABSL_FLAG(int, max_num_seqs, 64, "Sequences running at once.");
ABSL_FLAG(int, max_num_batched_tokens, 512, "Tokens per engine step (longer prompts are prefilled in chunks).");
ABSL_FLAG(attnserve::ByteSize, kv_cache_memory, attnserve::ByteSize{256ll << 20},
          "KV cache size, e.g. 256MiB or 2GiB.");
ABSL_FLAG(std::string, backend, "auto",
          "Where the model runs: cpu, cuda, or auto (cuda when this build has CUDA and a GPU is present).");
ABSL_FLAG(double, gpu_memory_utilization, 0.9,
          "cuda: the share of the GPU's memory for weights, activations and the KV cache, which gets the rest "
          "(--kv-cache-memory is for the CPU).");
ABSL_FLAG(bool, cuda_graphs, true,
          "cuda: decode steps replay CUDA graphs, one launch for all their kernels; --nocuda-graphs launches each "
          "kernel (for profilers and debuggers).");
ABSL_FLAG(std::string, load_format, "auto",
          "auto: the model file's weights. dummy: its config and tokenizer with random weights, for throughput "
          "studies.");
ABSL_FLAG(std::string, dummy_shape, "",
          "With --load-format dummy: the transformer of a known model instead of the file's (with the file's "
          "vocabulary): llama-3-8b, llama-3.2-1b or qwen2.5-7b.");
ABSL_FLAG(attnserve::ByteSize, linear_state_memory, attnserve::ByteSize{0},
          "Memory for the linear attention mode's per-sequence states, e.g. 8GiB: sequences beyond it wait; on "
          "cuda it is set aside before the KV cache. 0: the states take what memory is left.");
ABSL_FLAG(int, max_waiting, 1024, "Queued requests beyond which new ones get RESOURCE_EXHAUSTED.");
ABSL_FLAG(std::string, default_attention, "",
          "Attention policy of requests that bring none, as AttentionPolicy JSON, e.g. "
          "'{\"streaming\": {\"window_tokens\": 1024, \"positions\": \"ORIGINAL\"}}'. Empty: dense over the "
          "full cache.");
ABSL_FLAG(std::string, profile_dir, "",
          "Directory of head profiles (made by `attnserve profile`): every *.json file is loaded at start, named by "
          "its stem for AttentionPolicy.profile; a bad file fails the start.");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "On SIGTERM/SIGINT, how long running requests may finish before they are aborted.");

namespace attnserve {
namespace {

void LogLine(const std::string& message) {
  std::fputs(absl::StrFormat("I %s %s\n", absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone()),
                             message)
                 .c_str(),
             stderr);
}

int Fail(const absl::Status& status) {
  std::fputs(absl::StrFormat("error: %s\n", status.ToString()).c_str(), stderr);
  return 1;
}

}  // namespace

int RunServe() {
  // SIGTERM and SIGINT are taken by sigwait below; blocking them before any
  // thread starts makes every thread (gRPC's, the engine's) inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port < -1 || metrics_port > 65535) {
    return Fail(absl::InvalidArgumentError("--metrics_port: must be -1 (off) or in [0, 65535]"));
  }
  ServerOptions server_options;
  if (const std::string json = absl::GetFlag(FLAGS_default_attention); !json.empty()) {
    // Parsed before the model loads, so a typo fails at once; its values are
    // checked against the model by Server::Start.
    absl::StatusOr<v1::AttentionPolicy> policy = ParseAttentionPolicyJson(json);
    if (!policy.ok()) {
      return Fail(absl::Status(policy.status().code(), absl::StrCat("--default-attention: ", policy.status().message())));
    }
    server_options.default_attention = *std::move(policy);
  }
  const std::string load_format = absl::GetFlag(FLAGS_load_format), dummy_shape = absl::GetFlag(FLAGS_dummy_shape);
  if (load_format != "auto" && load_format != "dummy") {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--load-format: \"", load_format, "\" is none of auto, dummy")));
  }
  if (!dummy_shape.empty() && load_format != "dummy") {
    return Fail(absl::InvalidArgumentError("--dummy-shape: needs --load-format dummy"));
  }
  // Checked before the model file is read.
  if (!dummy_shape.empty()) {
    if (absl::StatusOr<ModelConfig> shape = ModelShape(dummy_shape); !shape.ok()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("--dummy-shape: ", shape.status().message())));
    }
  }
  absl::StatusOr<std::unique_ptr<Model>> model = load_format == "dummy"
                                                     ? LoadModelWithoutWeights(absl::GetFlag(FLAGS_model), dummy_shape)
                                                     : LoadModel(absl::GetFlag(FLAGS_model));
  if (!model.ok()) return Fail(model.status());
  if (const std::string dir = absl::GetFlag(FLAGS_profile_dir); !dir.empty()) {
    absl::StatusOr<HeadProfiles> profiles = LoadHeadProfiles(dir, (*model)->config);
    if (!profiles.ok()) {
      return Fail(absl::Status(profiles.status().code(), absl::StrCat("--profile-dir: ", profiles.status().message())));
    }
    std::vector<std::string> names;
    for (const auto& entry : *profiles) names.push_back(entry.first);
    LogLine(absl::StrFormat("loaded %d head profiles from %s: %s", names.size(), dir, absl::StrJoin(names, ", ")));
    server_options.profiles = *std::move(profiles);
  }

  Metrics metrics;
  std::optional<MetricsExposer> exposer;
  if (metrics_port >= 0) {
    absl::StatusOr<MetricsExposer> started = StartExposer(metrics, absl::StrFormat("0.0.0.0:%d", metrics_port));
    if (!started.ok()) return Fail(started.status());
    exposer.emplace(*std::move(started));
  }

  EngineOptions options;
  options.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  options.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  options.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_memory).bytes;
  options.max_waiting = absl::GetFlag(FLAGS_max_waiting);
  options.num_threads = absl::GetFlag(FLAGS_threads);
  options.backend = absl::GetFlag(FLAGS_backend);
  options.gpu_memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization);
  options.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
  options.linear_state_bytes = absl::GetFlag(FLAGS_linear_state_memory).bytes;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(**model, options, &metrics);
  if (!engine.ok()) return Fail(engine.status());
  LogLine(absl::StrFormat("backend %s on %s, %d KV pages of %d tokens", (*engine)->backend_name(), (*engine)->device(),
                          (*engine)->stats().kv_pages_total, options.page_size));

  server_options.host = absl::GetFlag(FLAGS_host);
  server_options.port = absl::GetFlag(FLAGS_port);
  // A backend that failed for good ends the process (status 1) rather than
  // leave it up and useless: whatever supervises it starts a healthy one.
  // The failure wakes the sigwait below as a SIGTERM would.
  struct BackendFailure {
    std::mutex mu;
    absl::Status status;
  };
  const auto failure = std::make_shared<BackendFailure>();
  server_options.on_backend_failure = [failure](const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(failure->mu);
      failure->status = status;
    }
    kill(getpid(), SIGTERM);
  };
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(**engine, &metrics, server_options);
  if (!server.ok()) return Fail(server.status());

  // Tests and scripts read the ports from this line.
  const std::string metrics_at = exposer ? absl::StrFormat(":%d", exposer->port()) : "off";
  std::printf("serving on %s:%d, metrics on %s\n", server_options.host.c_str(), (*server)->port(), metrics_at.c_str());
  std::fflush(stdout);

  int signal = 0;
  sigwait(&signals, &signal);
  absl::Status failed;
  {
    std::lock_guard<std::mutex> lock(failure->mu);
    failed = failure->status;
  }
  // After a backend failure the engine has failed the requests it held:
  // nothing is left to drain.
  const absl::Duration timeout = failed.ok() ? absl::GetFlag(FLAGS_drain_timeout) : absl::ZeroDuration();
  if (failed.ok()) {
    LogLine(absl::StrFormat("draining on signal %d (timeout %s)", signal, absl::FormatDuration(timeout)));
  } else {
    LogLine(absl::StrFormat("the backend failed for good (%s)", failed.ToString()));
  }
  (*server)->Drain(timeout);
  server->reset();
  engine->reset();
  LogLine("drained, exiting");
  return failed.ok() ? 0 : 1;
}

}  // namespace attnserve
