#include "engine/backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_backend_state.h"
#include "engine/backend/cuda/device_weights.h"
#include "engine/common/status_macros.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/paged_decode.h"
#include "kernels/cuda/quest_select.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/transformer_ops.h"

namespace attnserve {
namespace {

// The split-K partials of one attention launch stay under this; a prefill
// step with more rows (or longer contexts) runs in several launches.
constexpr size_t kDecodeWorkspaceBytes = size_t{256} << 20;
// Device memory CreateKvPool leaves for what a step allocates as it grows
// (the step metadata, the logits of long score chunks) and for cuBLAS.
constexpr size_t kStepReserveBytes = size_t{512} << 20;

}  // namespace

absl::Status CudaBackend::State::Reserve(DeviceBuffer& b, size_t bytes) {
  if (b.size() < bytes) ++buffers_moved;
  return ReserveData(b, bytes);
}

absl::Status CudaBackend::State::ReserveData(DeviceBuffer& b, size_t bytes) {
  if (b.size() >= bytes) return absl::OkStatus();
  // Half again at least, so that a batch ramping up moves buffers (and
  // recaptures graphs) a few times rather than at every new size; just
  // what is asked when that much is not free.
  const size_t grown = std::max(bytes, b.size() + b.size() / 2);
  b = DeviceBuffer();
  absl::StatusOr<DeviceBuffer> got = DeviceBuffer::Allocate(grown);
  if (!got.ok() && grown > bytes) got = DeviceBuffer::Allocate(bytes);
  ATTN_ASSIGN_OR_RETURN(b, std::move(got));
  return absl::OkStatus();
}

absl::Status CudaBackend::State::ReserveRows(int64_t n) {
  if (n <= rows) return absl::OkStatus();
  // A failure part-way leaves some buffers released: no capacity until a
  // later call gets them all.
  rows = 0;
  const ModelConfig& c = model.config;
  const size_t f = sizeof(float), b = sizeof(uint16_t), r = static_cast<size_t>(n);
  ATTN_RETURN_IF_ERROR(Reserve(x, r * c.hidden * f));
  ATTN_RETURN_IF_ERROR(Reserve(xn, r * std::max(c.hidden, c.q_dim()) * b));
  ATTN_RETURN_IF_ERROR(Reserve(qkv, r * (c.q_dim() + 2 * c.kv_dim()) * f));
  ATTN_RETURN_IF_ERROR(Reserve(q, r * c.q_dim() * f));
  ATTN_RETURN_IF_ERROR(Reserve(k, r * c.kv_dim() * f));
  ATTN_RETURN_IF_ERROR(Reserve(v, r * c.kv_dim() * f));
  ATTN_RETURN_IF_ERROR(Reserve(sink_q, r * c.q_dim() * f));
  ATTN_RETURN_IF_ERROR(Reserve(attn, r * c.q_dim() * f));
  ATTN_RETURN_IF_ERROR(Reserve(lse, r * c.n_heads * f));
  ATTN_RETURN_IF_ERROR(Reserve(gate_up, r * 2 * c.ffn_hidden * f));
  ATTN_RETURN_IF_ERROR(Reserve(h, r * c.ffn_hidden * b));
  ATTN_RETURN_IF_ERROR(Reserve(quest_q, r * c.q_dim() * f));
  ATTN_RETURN_IF_ERROR(Reserve(final_x, r * c.hidden * f));
  rows = n;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const Model& model,
                                                                 const CudaBackendOptions& options) {
  const ModelConfig& c = model.config;
  std::string why_not;
  if (!CudaDeviceAvailable(&why_not)) return absl::UnavailableError(why_not);
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::UnimplementedError(absl::StrCat("cuda backend: head_dim ", c.head_dim, " (its kernels cover 64 and 128)"));
  }
  if (c.rope_dim % 2 != 0 || c.rope_dim < 0 || c.rope_dim > c.head_dim) {
    return absl::UnimplementedError(absl::StrCat("cuda backend: rotary dimension ", c.rope_dim, " of head_dim ",
                                                 c.head_dim, " (its RoPE kernel rotates an even number up to it)"));
  }
  if (c.n_heads % c.n_kv_heads != 0 || c.n_heads / c.n_kv_heads > kMaxQueryHeadsPerKvHead) {
    return absl::UnimplementedError(absl::StrCat("cuda backend: ", c.n_heads, " query heads over ", c.n_kv_heads,
                                                 " KV heads (at most ", kMaxQueryHeadsPerKvHead, " per KV head)"));
  }
  if (options.max_step_tokens < 1) return absl::InvalidArgumentError("max_step_tokens must be positive");
  ATTN_RETURN_IF_ERROR(Cuda(cudaSetDevice(options.device), absl::StrCat("cudaSetDevice(", options.device, ")")));
  auto s = std::make_unique<State>(model);
  s->options = options;
  cudaDeviceProp prop{};
  ATTN_RETURN_IF_ERROR(Cuda(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties"));
  s->device_name = prop.name;
  ATTN_RETURN_IF_ERROR(Cuda(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  ATTN_ASSIGN_OR_RETURN(CublasHandle cublas, CublasHandle::Create(s->stream));
  s->cublas = std::move(cublas);
  if (options.dummy_weights || model.dummy_weights) {
    ATTN_ASSIGN_OR_RETURN(s->weights, RandomWeights(c, s->stream));
  } else {
    ATTN_ASSIGN_OR_RETURN(s->weights, UploadWeights(model));
  }
  s->rope = {std::pow(c.rope_base, -2.0f / static_cast<float>(c.rope_dim)), c.rope_freq_scale, c.context_length};
  AttentionHeadParams dense;
  dense.logit_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  s->dense_heads.assign(c.n_heads, dense);
  ATTN_RETURN_IF_ERROR(s->ReserveRows(options.max_step_tokens));
  ATTN_RETURN_IF_ERROR(s->Reserve(s->decode_ws, kDecodeWorkspaceBytes));
  if (options.cuda_graphs) s->graphs.emplace(s->stream);
  // The uploads from pageable memory may still be in flight on the legacy
  // stream, which the backend's non-blocking stream does not wait for.
  ATTN_RETURN_IF_ERROR(Cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(s)));
}

CudaBackend::CudaBackend(std::unique_ptr<State> state) : s_(std::move(state)) {}
CudaBackend::~CudaBackend() = default;

const ModelConfig& CudaBackend::config() const { return s_->model.config; }

int64_t CudaBackend::decode_weight_bytes() const { return s_->weights.DecodeBytes(s_->model.config); }
std::string CudaBackend::device() const { return s_->device_name; }

absl::Status CudaBackend::AllocateLinearState(LinearAttentionState& state) {
  ATTN_RETURN_IF_ERROR(Cuda(cudaSetDevice(s_->options.device), "cudaSetDevice"));
  return s_->AllocateLinearState(state);
}

absl::Status CudaBackend::State::AllocateLinearState(LinearAttentionState& state) {
  if (state.device_states != nullptr) return absl::OkStatus();
  const size_t bytes = static_cast<size_t>(state.bytes());
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
  if (!b.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("attention.linear: the sequence's state needs ", bytes,
                                                     " bytes of device memory beside the KV cache (",
                                                     b.status().message(),
                                                     "); --linear-state-memory sets memory aside for the "
                                                     "states before the KV cache is sized"));
  }
  ATTN_RETURN_IF_ERROR(Cuda(cudaMemsetAsync(b->data(), 0, bytes, stream), "cudaMemsetAsync(linear states)"));
  auto owner = std::make_shared<DeviceBuffer>(*std::move(b));
  state.device_states = std::shared_ptr<void>(owner, owner->data());
  return absl::OkStatus();
}

absl::Status CudaBackend::health() const { return s_->health; }

Backend::GraphCounts CudaBackend::graph_counts() const {
  if (!s_->graphs.has_value()) return {0, 0, s_->padding_rows};
  return {s_->graphs->replays(), s_->graphs->captures(), s_->padding_rows};
}

absl::StatusOr<KvCachePool> CudaBackend::CreateKvPool(int32_t page_size, double utilization, int64_t set_aside) {
  const ModelConfig& c = s_->model.config;
  const KvCacheShape shape{c.n_layers, c.n_kv_heads, c.head_dim, page_size};
  if (!(utilization > 0.0 && utilization <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("gpu_memory_utilization: ", utilization, " must be in (0, 1]"));
  }
  ATTN_RETURN_IF_ERROR(Cuda(cudaSetDevice(s_->options.device), "cudaSetDevice"));
  size_t free_bytes = 0, total_bytes = 0;
  ATTN_RETURN_IF_ERROR(Cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo"));
  if (set_aside < 0) return absl::InvalidArgumentError("linear state memory must not be negative");
  const double allowed = utilization * static_cast<double>(total_bytes) - static_cast<double>(total_bytes - free_bytes) -
                         static_cast<double>(kStepReserveBytes) - static_cast<double>(set_aside);
  const int64_t pages = static_cast<int64_t>(std::max(0.0, allowed) / static_cast<double>(KvCachePool::PageBytes(shape))) -
                        kMaxBatchPadding;
  if (pages < 2) {
    return absl::ResourceExhaustedError(absl::StrCat("gpu_memory_utilization: ", utilization, " of ", total_bytes,
                                                     " bytes leaves no room for a KV cache (", free_bytes, " free)"));
  }
  cudaStream_t stream = s_->stream;
  const KvCachePool::Allocator on_device = [stream](size_t elements) -> absl::StatusOr<std::shared_ptr<fp16_t>> {
    ATTN_ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(elements * sizeof(fp16_t)));
    ATTN_RETURN_IF_ERROR(Cuda(cudaMemsetAsync(b.data(), 0, b.size(), stream), "cudaMemsetAsync(kv cache)"));
    ATTN_RETURN_IF_ERROR(CudaStreamSync(stream));
    auto owner = std::make_shared<DeviceBuffer>(std::move(b));
    return std::shared_ptr<fp16_t>(owner, owner->as<fp16_t>());
  };
  ATTN_ASSIGN_OR_RETURN(KvCachePool pool, KvCachePool::Create(shape, static_cast<int32_t>(std::min<int64_t>(pages, 1 << 30)),
                                                              on_device, true, kMaxBatchPadding));
  s_->pool = pool;
  s_->padding.emplace(pool);
  return pool;
}

absl::Status CudaBackend::State::Layer(int32_t l, const StepMetadata& m, std::span<const SequenceStep> steps) {
  const ModelConfig& c = model.config;
  const DeviceLayerWeights& w = weights.layers[l];
  const int64_t n = m.rows;
  ATTN_RETURN_IF_ERROR(RmsNormCudaBf16(x.as<float>(), w.attn_norm, xn.as<uint16_t>(), n, c.hidden, c.rms_eps, stream));
  ATTN_RETURN_IF_ERROR(GemmBf16(*cublas, {w.wqkv, c.q_dim() + 2 * c.kv_dim(), c.hidden, xn.as<uint16_t>(), n,
                                          qkv.as<float>(), false}));
  QkvSplitArgs split;
  split.qkv = qkv.as<float>();
  split.rows = n;
  split.positions = m.positions;
  split.slots = m.slots;
  split.q = q.as<float>();
  split.k = k.as<float>();
  split.v = v.as<float>();
  split.sink_q = sink_q.as<float>();
  split.n_heads = c.n_heads;
  split.n_kv_heads = c.n_kv_heads;
  split.head_dim = c.head_dim;
  split.rotary_dim = c.rope_dim;
  split.rope = rope;
  ATTN_RETURN_IF_ERROR(QkvSplitRopeCuda(split, stream));
  KvAppendArgs append;
  append.seqs = m.append;
  append.n_seqs = m.n_seqs;
  append.layer = l;
  append.row_seq = m.row_seq;
  append.n_rows = static_cast<int32_t>(n);
  append.max_blocks_per_seq = m.max_blocks_per_seq;
  append.k = k.as<float>();
  append.v = v.as<float>();
  append.n_kv_heads = c.n_kv_heads;
  append.head_dim = c.head_dim;
  ATTN_RETURN_IF_ERROR(AppendKvCuda(append, stream));
  ATTN_RETURN_IF_ERROR(Attention(l, m, steps));
  ATTN_RETURN_IF_ERROR(ToBf16Cuda(attn.as<float>(), n * c.q_dim(), xn.as<uint16_t>(), stream));
  ATTN_RETURN_IF_ERROR(GemmBf16(*cublas, {w.wo, c.hidden, c.q_dim(), xn.as<uint16_t>(), n, x.as<float>(), true}));
  ATTN_RETURN_IF_ERROR(RmsNormCudaBf16(x.as<float>(), w.ffn_norm, xn.as<uint16_t>(), n, c.hidden, c.rms_eps, stream));
  ATTN_RETURN_IF_ERROR(GemmBf16(*cublas, {w.w_gate_up, 2 * c.ffn_hidden, c.hidden, xn.as<uint16_t>(), n,
                                          gate_up.as<float>(), false}));
  ATTN_RETURN_IF_ERROR(SwiGluBf16Cuda(gate_up.as<float>(), n, c.ffn_hidden, h.as<uint16_t>(), stream));
  return GemmBf16(*cublas, {w.w_down, c.hidden, c.ffn_hidden, h.as<uint16_t>(), n, x.as<float>(), true});
}

absl::Status CudaBackend::Forward(std::span<const SequenceStep> steps, std::vector<float>& logits) {
  State& s = *s_;
  const ModelConfig& c = s.model.config;
  if (!s.pool) return absl::FailedPreconditionError("cuda backend: no KV cache (CreateKvPool first)");
  if (!s.health.ok()) return s.health;
  ATTN_RETURN_IF_ERROR(CheckSteps(c, s.pool->shape().page_size, steps));
  logits.clear();
  if (steps.empty()) return absl::OkStatus();
  ATTN_RETURN_IF_ERROR(Cuda(cudaSetDevice(s.options.device), "cudaSetDevice"));
  const absl::Status status = s.Step(steps, logits);
  if (!status.ok()) {
    // Nothing of a failed step may still run when the caller moves on; a
    // fault that spoiled the context leaves the backend unhealthy for good.
    const cudaError_t synced = cudaStreamSynchronize(s.stream);
    const cudaError_t last = cudaGetLastError();
    for (const cudaError_t e : {synced, last}) {
      if (CudaErrorIsSticky(e) && s.health.ok()) {
        s.health = absl::UnavailableError(absl::StrCat("the GPU can run no more steps (", cudaGetErrorName(e), ": ",
                                                       cudaGetErrorString(e), "); restart the server"));
      }
    }
  }
  return status;
}

absl::Status CudaBackend::State::Step(std::span<const SequenceStep> given, std::vector<float>& logits) {
  const ModelConfig& c = model.config;
  // Padded whether or not graphs are on, so that turning them off changes
  // no result.
  const std::span<const SequenceStep> steps = padding->Pad(given);
  // The linear mode's states live on the device with their sequence; a step
  // from position 0 starts them afresh.
  std::vector<float*> linear_states(steps.size(), nullptr);
  for (size_t i = 0; i < steps.size(); ++i) {
    LinearAttentionState* st = steps[i].linear;
    if (st == nullptr) continue;
    ATTN_RETURN_IF_ERROR(AllocateLinearState(*st));
    linear_states[i] = static_cast<float*>(st->device_states.get());
    if (steps[i].first_pos == 0) {
      ATTN_RETURN_IF_ERROR(
          Cuda(cudaMemsetAsync(linear_states[i], 0, st->bytes(), stream), "cudaMemsetAsync(linear states)"));
    }
  }

  StepMetadata m;
  ATTN_RETURN_IF_ERROR(StageStep(steps, linear_states, m));
  ATTN_RETURN_IF_ERROR(ReserveRows(m.rows));
  // Grown here, not between layers: freeing a buffer a queued kernel reads
  // would need a sync.
  ATTN_RETURN_IF_ERROR(Reserve(quest_ws, QuestSelectWorkspaceBytes(m.n_quest, c.n_kv_heads, m.quest_max_pages)));
  // Past ~2M tokens (streaming) one row's partials outgrow the workspace.
  ATTN_RETURN_IF_ERROR(
      Reserve(decode_ws, DecodeAttentionWorkspaceBytes(1, c.n_heads, c.head_dim, m.decode_max_tokens)));
  ATTN_RETURN_IF_ERROR(Reserve(step_logits, static_cast<size_t>(m.n_logit_rows) * c.vocab_size * sizeof(float)));
  ATTN_RETURN_IF_ERROR(Reserve(picked, static_cast<size_t>(m.n_pick_rows) * sizeof(TokenPick)));
  ATTN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(step_index.data(), staging.index.data(), staging.index.size(),
                                            cudaMemcpyHostToDevice, stream),
                            "cudaMemcpyAsync(step index)"));
  ATTN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(step_data.data(), staging.data.data(), staging.data.size(),
                                            cudaMemcpyHostToDevice, stream),
                            "cudaMemcpyAsync(step data)"));
  // Only the plans new this step: the others are on the device already.
  const size_t new_plans = staging.plans.upload_begin();
  if (staging.plans.size() > new_plans) {
    ATTN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(step_plans.as<uint8_t>() + new_plans, staging.plans.data() + new_plans,
                                              staging.plans.size() - new_plans, cudaMemcpyHostToDevice, stream),
                              "cudaMemcpyAsync(plans)"));
  }
  staging.plans.Uploaded();
  const auto enqueue = [&] { return EnqueueStep(m, steps); };
  if (graphs.has_value() && GraphReplayable(m)) {
    std::vector<uintptr_t> signature = LaunchSignature(m);
    signature.push_back(buffers_moved);
    ATTN_RETURN_IF_ERROR(graphs->Run(m.n_seqs, std::move(signature), enqueue));
  } else {
    ATTN_RETURN_IF_ERROR(enqueue());
  }

  // Rows returned whole, then rows whose token was picked on the device.
  const int64_t returned = m.n_logit_rows - m.n_pick_rows;
  logits.resize(static_cast<size_t>(returned) * c.vocab_size);
  picked_host.resize(m.n_pick_rows);
  if (!logits.empty()) {
    ATTN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(logits.data(), step_logits.data(), logits.size() * sizeof(float),
                                              cudaMemcpyDeviceToHost, stream),
                              "cudaMemcpyAsync(logits)"));
  }
  if (!picked_host.empty()) {
    ATTN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(picked_host.data(), picked.data(), picked_host.size() * sizeof(TokenPick),
                                              cudaMemcpyDeviceToHost, stream),
                              "cudaMemcpyAsync(picked tokens)"));
  }
  ATTN_RETURN_IF_ERROR(CudaStreamSync(stream));
  for (int64_t i = 0; i < m.n_pick_rows; ++i) CopyPickResults(picked_host[i], *steps[m.pick_steps[i]].pick);
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].linear != nullptr) steps[i].linear->folded_end = m.folded_end[i];
  }
  padding_rows += static_cast<int64_t>(steps.size() - given.size());
  return absl::OkStatus();
}

// The metadata is staged at the device buffers' addresses; a buffer too
// small is grown and the step staged again at the new one.
absl::Status CudaBackend::State::StageStep(std::span<const SequenceStep> steps, std::span<float* const> linear_states,
                                           StepMetadata& m) {
  for (int attempt = 0;; ++attempt) {
    staging.index.Reset(step_index.data());
    staging.data.Reset(step_data.data());
    staging.outputs.Reset(step_outputs.data());
    staging.plans.BeginStep(step_plans.data(), step_plans.size());
    ATTN_ASSIGN_OR_RETURN(m, BuildStepMetadata(model.config, *pool, steps, linear_states, dense_heads, staging));
    const bool fits = staging.index.size() <= step_index.size() && staging.data.size() <= step_data.size() &&
                      staging.outputs.size() <= step_outputs.size() && staging.plans.size() <= step_plans.size();
    if (fits) return absl::OkStatus();
    if (attempt > 0) return absl::InternalError("step metadata: its size changed when staged again");
    ATTN_RETURN_IF_ERROR(Reserve(step_index, staging.index.size()));
    ATTN_RETURN_IF_ERROR(ReserveData(step_data, staging.data.size()));
    ATTN_RETURN_IF_ERROR(ReserveData(step_outputs, staging.outputs.size()));
    if (const size_t plans = staging.plans.size(); plans > step_plans.size()) {
      // The plans on the device go with the old buffer (a new one may lie
      // at its address; Invalidate empties the staging too). Room for the
      // plans of requests still to come, if there is memory for it.
      staging.plans.Invalidate();
      if (!ReserveData(step_plans, 2 * plans).ok()) ATTN_RETURN_IF_ERROR(ReserveData(step_plans, plans));
    }
  }
}

// Every kernel of the step, and nothing else (no copy, no allocation): a
// decode step is captured from here into a CUDA graph. The picks are left
// in `picked`, the returned rows first in `step_logits`.
absl::Status CudaBackend::State::EnqueueStep(const StepMetadata& m, std::span<const SequenceStep> steps) {
  const ModelConfig& c = model.config;
  ATTN_RETURN_IF_ERROR(EmbedRowsCuda(weights.token_embd, m.tokens, m.rows, c.hidden, x.as<float>(), stream));
  for (int32_t l = 0; l < c.n_layers; ++l) ATTN_RETURN_IF_ERROR(Layer(l, m, steps));
  if (m.n_logit_rows == 0) return absl::OkStatus();
  ATTN_RETURN_IF_ERROR(GatherRowsCuda(x.as<float>(), m.logit_rows, m.n_logit_rows, c.hidden, final_x.as<float>(), stream));
  ATTN_RETURN_IF_ERROR(RmsNormCudaBf16(final_x.as<float>(), weights.output_norm, xn.as<uint16_t>(), m.n_logit_rows,
                                       c.hidden, c.rms_eps, stream));
  ATTN_RETURN_IF_ERROR(GemmBf16(*cublas, {weights.output, c.vocab_size, c.hidden, xn.as<uint16_t>(), m.n_logit_rows,
                                          step_logits.as<float>(), false}));
  const int64_t returned = m.n_logit_rows - m.n_pick_rows;
  return PickTokensCuda(step_logits.as<float>() + returned * c.vocab_size, m.n_pick_rows, c.vocab_size, m.picks,
                        picked.as<TokenPick>(), stream);
}

}  // namespace attnserve
