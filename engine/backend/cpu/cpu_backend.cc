#include "engine/backend/cpu/cpu_backend.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"

namespace attnserve {
namespace {

// Queries per attention task: long prefill chunks are split so both the
// threads and the key pages stay busy.
constexpr int32_t kQueriesPerTask = 32;

}  // namespace

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(const Model& model, KvCachePool& pool,
                                                               const CpuBackendOptions& options) {
  const ModelConfig& c = model.config;
  const KvCacheShape& shape = pool.shape();
  if (shape.n_layers != c.n_layers || shape.n_kv_heads != c.n_kv_heads || shape.head_dim != c.head_dim) {
    return absl::InvalidArgumentError("kv cache shape does not match the model");
  }
  if (options.num_threads < 1 || options.num_threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("threads = ", options.num_threads, " must be in [1, 1024]"));
  }
  if (options.max_step_tokens < 1) {
    return absl::InvalidArgumentError("max_step_tokens must be positive");
  }
  return std::unique_ptr<CpuBackend>(new CpuBackend(model, pool, options));
}

CpuBackend::CpuBackend(const Model& model, KvCachePool& pool, const CpuBackendOptions& options)
    : model_(model), pool_(pool), options_(options), threads_(options.num_threads) {
  const ModelConfig& c = model.config;
  const size_t rows = options.max_step_tokens;
  s_.x.resize(rows * c.hidden);
  s_.xn.resize(rows * c.hidden);
  s_.q.resize(rows * c.q_dim());
  s_.k.resize(rows * c.kv_dim());
  s_.v.resize(rows * c.kv_dim());
  s_.attn.resize(rows * c.q_dim());
  s_.gate.resize(rows * c.ffn_hidden);
  s_.up.resize(rows * c.ffn_hidden);
  s_.positions.resize(rows);
  AttentionHeadParams dense;
  dense.logit_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  dense_heads_.assign(c.n_heads, dense);
}

absl::Status CpuBackend::Forward(std::span<const SequenceStep> steps, std::vector<float>& logits) {
  const ModelConfig& c = model_.config;
  int64_t rows = 0;
  int64_t logit_rows = 0;
  for (const SequenceStep& st : steps) {
    if (st.tokens.empty()) return absl::InvalidArgumentError("a sequence step has no tokens");
    const int64_t end = st.first_pos + static_cast<int64_t>(st.tokens.size());
    if (st.first_pos < 0 || st.pages == nullptr ||
        end > static_cast<int64_t>(st.pages->pages.size()) * pool_.shape().page_size) {
      return absl::InvalidArgumentError("a sequence step's positions are not reserved in its page table");
    }
    if (st.attention != nullptr && (st.attention->n_layers() != c.n_layers || st.attention->n_heads() != c.n_heads)) {
      return absl::InvalidArgumentError("a sequence's attention plan was made for another model");
    }
    for (int32_t t : st.tokens) {
      if (t < 0 || t >= c.vocab_size) return absl::InvalidArgumentError(absl::StrCat("token id ", t, " is out of vocabulary"));
    }
    for (size_t i = 0; i < st.tokens.size(); ++i) s_.positions[rows + i] = st.first_pos + static_cast<int32_t>(i);
    rows += static_cast<int64_t>(st.tokens.size());
    if (rows > options_.max_step_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("step has more than ", options_.max_step_tokens, " tokens"));
    }
    logit_rows += st.logits == LogitsWanted::kAll ? static_cast<int64_t>(st.tokens.size())
                                                  : (st.logits == LogitsWanted::kLast ? 1 : 0);
  }
  Embed(steps, rows);
  for (int32_t l = 0; l < c.n_layers; ++l) Layer(l, steps, rows);

  // Final norm only on the rows whose logits are wanted, packed into xn.
  int64_t out = 0, row = 0;
  for (const SequenceStep& st : steps) {
    const int64_t n = static_cast<int64_t>(st.tokens.size());
    const int64_t first = st.logits == LogitsWanted::kAll ? row : row + n - 1;
    const int64_t count = st.logits == LogitsWanted::kAll ? n : (st.logits == LogitsWanted::kLast ? 1 : 0);
    RmsNorm(&s_.x[first * c.hidden], model_.weights.output_norm, &s_.xn[out * c.hidden], count, c.hidden, c.rms_eps);
    out += count;
    row += n;
  }
  logits.resize(static_cast<size_t>(logit_rows) * c.vocab_size);
  if (logit_rows > 0) MatMul(model_.weights.output, s_.xn.data(), logit_rows, logits.data(), threads_);
  return absl::OkStatus();
}

void CpuBackend::Embed(std::span<const SequenceStep> steps, int64_t rows) {
  const ModelConfig& c = model_.config;
  const WeightMatrix& e = model_.weights.token_embd;
  int64_t r = 0;
  for (const SequenceStep& st : steps) {
    for (int32_t t : st.tokens) {
      DequantizeRow(e.type, static_cast<const uint8_t*>(e.data) + static_cast<size_t>(t) * e.row_bytes,
                    &s_.x[r * c.hidden], c.hidden);
      ++r;
    }
  }
}

void CpuBackend::Layer(int32_t layer, std::span<const SequenceStep> steps, int64_t rows) {
  const ModelConfig& c = model_.config;
  const LlamaLayerWeights& w = model_.weights.layers[layer];
  RmsNorm(s_.x.data(), w.attn_norm, s_.xn.data(), rows, c.hidden, c.rms_eps);
  MatMul(w.wq, s_.xn.data(), rows, s_.q.data(), threads_);
  MatMul(w.wk, s_.xn.data(), rows, s_.k.data(), threads_);
  MatMul(w.wv, s_.xn.data(), rows, s_.v.data(), threads_);
  const RopeParams rope{c.head_dim, c.rope_dim, c.rope_base, c.rope_freq_scale};
  Rope(s_.q.data(), s_.positions.data(), rows, c.n_heads, rope);
  Rope(s_.k.data(), s_.positions.data(), rows, c.n_kv_heads, rope);
  int64_t r = 0;
  for (const SequenceStep& st : steps) {
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    WriteKv(pool_, layer, *st.pages, st.first_pos, n, &s_.k[r * c.kv_dim()], &s_.v[r * c.kv_dim()]);
    r += n;
  }
  Attention(layer, steps);
  MatMul(w.wo, s_.attn.data(), rows, s_.xn.data(), threads_);
  AddInPlace(s_.x.data(), s_.xn.data(), rows * c.hidden);

  RmsNorm(s_.x.data(), w.ffn_norm, s_.xn.data(), rows, c.hidden, c.rms_eps);
  MatMul(w.w_gate, s_.xn.data(), rows, s_.gate.data(), threads_);
  MatMul(w.w_up, s_.xn.data(), rows, s_.up.data(), threads_);
  SwiGlu(s_.gate.data(), s_.up.data(), s_.gate.data(), rows * c.ffn_hidden);
  MatMul(w.w_down, s_.gate.data(), rows, s_.xn.data(), threads_);
  AddInPlace(s_.x.data(), s_.xn.data(), rows * c.hidden);
}

void CpuBackend::Attention(int32_t layer, std::span<const SequenceStep> steps) {
  const ModelConfig& c = model_.config;
  // Tasks: (sequence, query block, kv head).
  struct Task {
    int64_t first_row;
    int32_t n_queries;
    int32_t kv_head;
    const SequenceStep* step;
  };
  std::vector<Task> tasks;
  int64_t row = 0;
  for (const SequenceStep& st : steps) {
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    for (int32_t q0 = 0; q0 < n; q0 += kQueriesPerTask) {
      for (int32_t g = 0; g < c.n_kv_heads; ++g) {
        tasks.push_back({row + q0, std::min(kQueriesPerTask, n - q0), g, &st});
      }
    }
    row += n;
  }
  SequenceAttentionParams dense;
  dense.heads = dense_heads_.data();
  threads_.ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t i, int) {
    const Task& t = tasks[i];
    // Each sequence brings its own policy: one step, per-sequence parameters.
    const SequenceAttentionParams& params = t.step->attention != nullptr ? t.step->attention->layer(layer) : dense;
    const int32_t num_tokens = t.step->first_pos + static_cast<int32_t>(t.step->tokens.size());
    const PagedKv kv = LayerView(pool_, layer, *t.step->pages, num_tokens);
    AttentionQueries q;
    q.q = &s_.q[t.first_row * c.q_dim()];
    q.positions = &s_.positions[t.first_row];
    q.n_queries = t.n_queries;
    q.n_q_heads = c.n_heads;
    PagedAttentionKvHead(q, kv, params, t.kv_head, &s_.attn[t.first_row * c.q_dim()]);
  });
}

}  // namespace attnserve
