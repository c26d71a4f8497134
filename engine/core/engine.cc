#include "engine/core/engine.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/backend/cpu/cpu_backend.h"
#ifdef ATTNSERVE_WITH_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#include "kernels/cuda/device.h"
#endif
#include "engine/common/status_macros.h"
#include "engine/core/engine_impl.h"
#include "engine/kv/prefix_cache.h"
#include "engine/sampling/sampler.h"

namespace attnserve {
namespace {

// A plan is made for one model; one for another would fail the whole step.
// Quest reads whole pages: its budget needs one at least.
absl::Status CheckPlanFitsEngine(const AttentionPlan* plan, const ModelConfig& c, int32_t page_size) {
  if (plan == nullptr) return absl::OkStatus();
  if (plan->n_layers() != c.n_layers || plan->n_heads() != c.n_heads) {
    return absl::InvalidArgumentError(absl::StrCat("attention: the plan has ", plan->n_layers(), " layers of ",
                                                   plan->n_heads(), " heads; the model ", c.n_layers, " of ",
                                                   c.n_heads));
  }
  if (plan->quest_token_budget() > 0 && plan->quest_token_budget() < page_size) {
    return absl::InvalidArgumentError(absl::StrCat("attention.sparse.token_budget: must be >= the KV page size ",
                                                   page_size, " (got ", plan->quest_token_budget(), ")"));
  }
  return absl::OkStatus();
}

// "auto" is cuda where this build has it and a device is present.
absl::StatusOr<std::string> ChooseBackend(const std::string& name) {
  if (name != "cpu" && name != "cuda" && name != "auto") {
    return absl::InvalidArgumentError(absl::StrCat("backend: \"", name, "\" is none of cpu, cuda, auto"));
  }
  if (name == "cpu") return name;
#ifdef ATTNSERVE_WITH_CUDA
  std::string why_not;
  if (CudaDeviceAvailable(&why_not)) return std::string("cuda");
  if (name == "auto") return std::string("cpu");
  return absl::UnavailableError(absl::StrCat("backend: cuda, but ", why_not));
#else
  if (name == "auto") return std::string("cpu");
  return absl::UnimplementedError("backend: cuda, but this build has no CUDA (nvcc was not found)");
#endif
}

absl::Status CheckEngineOptions(const EngineOptions& options) {
  if (options.max_num_seqs < 1 || options.max_num_batched_tokens < 1 || options.page_size < 1 ||
      options.max_waiting < 0 || options.linear_state_bytes < 0) {
    return absl::InvalidArgumentError("engine options must be positive");
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<Engine> Engine::Start(std::unique_ptr<Impl> impl) {
  const Model& model = impl->model;
  for (int32_t id = 0; id < model.config.vocab_size; ++id) {
    if (model.tokenizer->IsEndOfGeneration(id)) impl->eog_ids.push_back(id);
  }
  impl->stats.kv_pages_total = impl->pool.num_pages();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Model& model, const EngineOptions& options,
                                                       Metrics* metrics) {
  ATTN_RETURN_IF_ERROR(CheckEngineOptions(options));
  ATTN_ASSIGN_OR_RETURN(const std::string backend, ChooseBackend(options.backend));
  const int32_t max_step_tokens = std::max(options.max_num_batched_tokens, options.max_num_seqs);
  if (backend == "cuda") {
#ifdef ATTNSERVE_WITH_CUDA
    CudaBackendOptions cuda_options;
    cuda_options.max_step_tokens = max_step_tokens;
    cuda_options.cuda_graphs = options.cuda_graphs;
    ATTN_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> cuda, CudaBackend::Create(model, cuda_options));
    ATTN_ASSIGN_OR_RETURN(KvCachePool pool, cuda->CreateKvPool(options.page_size, options.gpu_memory_utilization,
                                                               options.linear_state_bytes));
    auto impl = std::make_unique<Impl>(model, options, metrics, std::move(pool));
    impl->backend = std::move(cuda);
    return Start(std::move(impl));
#endif
  }
  const auto cpu = [&](const Model& m, KvCachePool& pool) -> absl::StatusOr<std::unique_ptr<Backend>> {
    CpuBackendOptions backend_options;
    backend_options.num_threads = options.num_threads;
    backend_options.max_step_tokens = max_step_tokens;
    ATTN_ASSIGN_OR_RETURN(std::unique_ptr<CpuBackend> b, CpuBackend::Create(m, pool, backend_options));
    return b;
  };
  return CreateWithBackend(model, options, metrics, cpu);
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::CreateWithBackend(const Model& model, const EngineOptions& options,
                                                                  Metrics* metrics, const BackendFactory& backend) {
  ATTN_RETURN_IF_ERROR(CheckEngineOptions(options));
  const ModelConfig& c = model.config;
  const KvCacheShape shape{c.n_layers, c.n_kv_heads, c.head_dim, options.page_size};
  const int64_t page_bytes = KvCachePool::PageBytes(shape);
  const int64_t pages = options.kv_cache_bytes / page_bytes;
  if (pages < 2) {
    return absl::InvalidArgumentError(absl::StrCat("kv cache memory of ", options.kv_cache_bytes,
                                                   " bytes holds fewer than 2 pages of ", page_bytes, " bytes"));
  }
  ATTN_ASSIGN_OR_RETURN(KvCachePool pool,
                        KvCachePool::Create(shape, static_cast<int32_t>(std::min<int64_t>(pages, 1 << 30))));
  auto impl = std::make_unique<Impl>(model, options, metrics, std::move(pool));
  ATTN_ASSIGN_OR_RETURN(impl->backend, backend(model, impl->pool));
  return Start(std::move(impl));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  impl_->thread.join();
}

const Model& Engine::model() const { return impl_->model; }
const EngineOptions& Engine::options() const { return impl_->options; }
std::string Engine::backend_name() const { return impl_->backend->name(); }
std::string Engine::device() const { return impl_->backend->device(); }

absl::Status Engine::health() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->health;
}

void Engine::SetHealthListener(std::function<void(const absl::Status&)> listener) {
  std::lock_guard<std::mutex> lock(impl_->listener_mu);
  impl_->health_listener = std::move(listener);
  if (const absl::Status now = health(); !now.ok() && impl_->health_listener) impl_->health_listener(now);
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

absl::StatusOr<uint64_t> Engine::Submit(GenerationRequest request, std::shared_ptr<OutputStream> out) {
  Impl& e = *impl_;
  const ModelConfig& c = e.model.config;
  const int32_t prompt = static_cast<int32_t>(request.prompt_ids.size());
  if (prompt == 0) return absl::InvalidArgumentError("prompt: is empty");
  for (int32_t t : request.prompt_ids) {
    if (t < 0 || t >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_token_ids: token ", t, " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  // Streaming positions=CACHE runs past the model's context.
  const int32_t limit = SequenceTokenLimit(request.attention.get(), c.context_length);
  if (prompt >= limit) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt, " tokens leave no room in the model's context of ",
                                                   limit));
  }
  ATTN_RETURN_IF_ERROR(ValidateSamplingOptions(request.sampling, c.vocab_size, limit - prompt));
  ATTN_RETURN_IF_ERROR(CheckPlanFitsEngine(request.attention.get(), c, e.options.page_size));
  const VisibleSet visible = request.attention != nullptr ? request.attention->visible_set() : VisibleSet{};
  // ACT prefills its prompt in one step.
  const int32_t chunk = request.attention != nullptr && request.attention->act()
                            ? std::max(prompt, e.options.max_num_batched_tokens)
                            : e.options.max_num_batched_tokens;
  const int64_t pages_needed = visible.PeakPages(prompt + 1, chunk, e.options.page_size);
  if (pages_needed > e.pool.num_pages()) {
    return absl::ResourceExhaustedError(absl::StrCat("prompt: ", prompt, " tokens need ", pages_needed,
                                                     " KV pages; the cache has ", e.pool.num_pages()));
  }
  auto r = std::make_unique<RequestState>();
  r->request = std::move(request);
  r->out = std::move(out);
  const int32_t n = std::max(1, r->request.sampling.n);
  r->out->completions_ = n;
  std::lock_guard<std::mutex> lock(e.mu);
  if (e.draining || e.stopping) return absl::UnavailableError("the server is shutting down");
  if (!e.health.ok()) return e.health;
  if (e.queued >= e.options.max_waiting + e.options.max_num_seqs) {
    return absl::ResourceExhaustedError(absl::StrCat("the waiting queue is full (", e.options.max_waiting, " requests)"));
  }
  r->handle = e.next_handle++;
  const uint64_t handle = r->handle;
  ++e.queued;
  e.inbox.push_back(std::move(r));
  e.wake.notify_one();
  return handle;
}

void Engine::Abort(uint64_t handle, absl::Status reason) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->aborts.emplace_back(handle, std::move(reason));
  }
  impl_->wake.notify_one();
}

absl::StatusOr<ScoreResult> Engine::Score(std::vector<int32_t> token_ids, std::shared_ptr<const AttentionPlan> attention,
                                          absl::Time deadline) {
  Impl& e = *impl_;
  const ModelConfig& c = e.model.config;
  if (token_ids.size() < 2) return absl::InvalidArgumentError("input: scoring needs at least 2 tokens");
  const int32_t limit = SequenceTokenLimit(attention.get(), c.context_length);
  if (static_cast<int64_t>(token_ids.size()) > limit) {
    return absl::InvalidArgumentError(absl::StrCat("input: ", token_ids.size(), " tokens exceed the model's context of ",
                                                   limit));
  }
  for (int32_t t : token_ids) {
    if (t < 0 || t >= c.vocab_size) return absl::InvalidArgumentError(absl::StrCat("token_ids: ", t, " is out of vocabulary"));
  }
  ATTN_RETURN_IF_ERROR(CheckPlanFitsEngine(attention.get(), c, e.options.page_size));
  // A streaming window gives pages back as the scoring advances; under ACT
  // the text first runs whole.
  const VisibleSet visible = attention != nullptr ? attention->visible_set() : VisibleSet{};
  const int64_t n = static_cast<int64_t>(token_ids.size());
  const int32_t chunk = attention != nullptr && attention->act() ? static_cast<int32_t>(n) : kScoreChunkTokens;
  const int64_t pages_needed = visible.PeakPages(n, chunk, e.options.page_size);
  if (pages_needed > e.pool.num_pages()) {
    return absl::ResourceExhaustedError("input: the text does not fit in the KV cache");
  }
  auto r = std::make_unique<RequestState>();
  r->score = true;
  r->request.prompt_ids = std::move(token_ids);
  r->request.deadline = deadline;
  r->request.attention = std::move(attention);
  std::future<absl::StatusOr<ScoreResult>> result = r->score_result.get_future();
  {
    std::lock_guard<std::mutex> lock(e.mu);
    if (e.draining || e.stopping) return absl::UnavailableError("the server is shutting down");
    if (!e.health.ok()) return e.health;
    r->handle = e.next_handle++;
    ++e.queued;
    e.inbox.push_back(std::move(r));
  }
  e.wake.notify_one();
  return result.get();
}

void Engine::Drain(absl::Duration timeout) {
  Impl& e = *impl_;
  std::unique_lock<std::mutex> lock(e.mu);
  e.draining = true;
  e.drain_deadline = absl::Now() + timeout;
  e.wake.notify_one();
  e.idle.wait(lock, [&] { return e.queued == 0; });
}

}  // namespace attnserve
