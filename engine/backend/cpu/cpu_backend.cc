#include "engine/backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <new>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "kernels/common/rope_math.h"
#include "kernels/common/taylor.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/linear_attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quest.h"
#include "kernels/cpu/quant.h"

namespace attnserve {
namespace {

// Queries per attention task: long prefill chunks are split so both the
// threads and the key pages stay busy.
constexpr int32_t kQueriesPerTask = 32;

// The processor's name, from /proc/cpuinfo; "cpu" where it has none.
std::string CpuModelName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (!absl::StartsWith(line, "model name")) continue;
    const size_t colon = line.find(':');
    if (colon != std::string::npos) return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return "cpu";
}

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
  std::optional<LlamaWeights> random;
  if (model.dummy_weights) {
    ATTN_ASSIGN_OR_RETURN(random, RandomLlamaWeights(c, /*seed=*/1));
  } else if (static_cast<int32_t>(model.weights.layers.size()) != c.n_layers) {
    return absl::InvalidArgumentError("cpu backend: the model has no weights for its layers");
  }
  return std::unique_ptr<CpuBackend>(new CpuBackend(model, pool, options, std::move(random)));
}

CpuBackend::CpuBackend(const Model& model, KvCachePool& pool, const CpuBackendOptions& options,
                       std::optional<LlamaWeights> random_weights)
    : model_(model),
      random_weights_(std::move(random_weights)),
      weights_(random_weights_ ? *random_weights_ : model.weights),
      pool_(pool),
      options_(options),
      threads_(options.num_threads),
      device_(CpuModelName()) {
  const ModelConfig& c = model.config;
  ReserveRows(options.max_step_tokens);
  rope_.theta_scale = std::pow(c.rope_base, -2.0f / static_cast<float>(c.rope_dim));
  rope_.freq_scale = c.rope_freq_scale;
  rope_.context = c.context_length;
  AttentionHeadParams dense;
  dense.logit_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  dense_heads_.assign(c.n_heads, dense);
}

void CpuBackend::ReserveRows(int64_t rows) {
  if (rows <= s_.rows) return;
  const ModelConfig& c = model_.config;
  const size_t n = rows;
  s_.x.resize(n * c.hidden);
  s_.xn.resize(n * c.hidden);
  s_.q.resize(n * c.q_dim());
  s_.k.resize(n * c.kv_dim());
  s_.v.resize(n * c.kv_dim());
  s_.attn.resize(n * c.q_dim());
  s_.gate.resize(n * c.ffn_hidden);
  s_.up.resize(n * c.ffn_hidden);
  s_.positions.resize(n);
  s_.sink_q.resize(n * c.q_dim());
  s_.slots.resize(n);
  s_.rope_positions.resize(n);
  s_.lse.resize(n * c.n_heads);
  s_.rows = rows;
}

absl::Status CpuBackend::AllocateLinearState(LinearAttentionState& state) {
  try {
    state.AllocateHostStates();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("attention.linear: the sequence's state needs ", state.bytes(), " bytes of memory"));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Forward(std::span<const SequenceStep> steps, std::vector<float>& logits) {
  const ModelConfig& c = model_.config;
  ATTN_RETURN_IF_ERROR(CheckSteps(c, pool_.shape().page_size, steps));
  int64_t rows = 0;
  int64_t logit_rows = 0;
  for (const SequenceStep& st : steps) {
    rows += static_cast<int64_t>(st.tokens.size());
    logit_rows += RowsOfLogits(st);
  }
  ReserveRows(rows);
  for (int64_t r = 0; const SequenceStep& st : steps) {
    for (size_t i = 0; i < st.tokens.size(); ++i) s_.positions[r++] = st.first_pos + static_cast<int32_t>(i);
  }
  // Streaming positions=CACHE: sequences with a query past the first
  // sink_tokens + window_tokens (where its slot and position part) get the
  // queries at their slots for the sink keys; the others need none.
  s_.sink_steps.assign(steps.size(), 0);
  int64_t first_row = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const SequenceStep& st = steps[i];
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    if (NeedsSinkSlots(st)) {
      const SequenceAttentionParams& p = st.attention->layer(0);
      s_.sink_steps[i] = 1;
      for (int32_t j = 0; j < n; ++j) s_.slots[first_row + j] = CacheSlot(p, st.first_pos + j);
    }
    first_row += n;
  }
  Embed(steps, rows);
  for (int32_t l = 0; l < c.n_layers; ++l) Layer(l, steps, rows);

  // Final norm only on the rows whose logits are wanted, packed into xn.
  int64_t out = 0, row = 0;
  for (const SequenceStep& st : steps) {
    const int64_t n = static_cast<int64_t>(st.tokens.size());
    const int64_t first = st.logits == LogitsWanted::kAll ? row : row + n - 1;
    const int64_t count = RowsOfLogits(st);
    RmsNorm(&s_.x[first * c.hidden], weights_.output_norm, &s_.xn[out * c.hidden], count, c.hidden, c.rms_eps);
    out += count;
    row += n;
  }
  logits.resize(static_cast<size_t>(logit_rows) * c.vocab_size);
  if (logit_rows > 0) MatMul(weights_.output, s_.xn.data(), logit_rows, logits.data(), threads_);
  // Picked rows: their tokens out, their rows dropped from `logits`.
  const size_t vocab = c.vocab_size;
  size_t kept = 0, at = 0;
  for (const SequenceStep& st : steps) {
    const size_t count = static_cast<size_t>(RowsOfLogits(st));
    if (st.logits == LogitsWanted::kLastPick) {
      const std::span<float> row(&logits[at * vocab], vocab);
      for (int32_t e = 0; e < st.pick->n_edits; ++e) {
        const LogitEdit& edit = st.pick->edits[e];
        if (edit.token >= 0 && edit.token < c.vocab_size) row[edit.token] = EditLogit(row[edit.token], edit);
      }
      st.pick->token = PickToken(row, *st.pick);
      if (st.pick->logprobs) PickLogprobs(row, *st.pick);
    } else if (kept != at) {
      std::copy_n(&logits[at * vocab], count * vocab, &logits[kept * vocab]);
    }
    if (st.logits != LogitsWanted::kLastPick) kept += count;
    at += count;
  }
  logits.resize(kept * vocab);
  return absl::OkStatus();
}

void CpuBackend::Embed(std::span<const SequenceStep> steps, int64_t rows) {
  const ModelConfig& c = model_.config;
  const WeightMatrix& e = weights_.token_embd;
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
  const LlamaLayerWeights& w = weights_.layers[layer];
  RmsNorm(s_.x.data(), w.attn_norm, s_.xn.data(), rows, c.hidden, c.rms_eps);
  MatMul(w.wq, s_.xn.data(), rows, s_.q.data(), threads_);
  MatMul(w.wk, s_.xn.data(), rows, s_.k.data(), threads_);
  MatMul(w.wv, s_.xn.data(), rows, s_.v.data(), threads_);
  // Queries at their cache slots, from the queries before RoPE.
  int64_t row = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const int64_t n = static_cast<int64_t>(steps[i].tokens.size());
    if (s_.sink_steps[i]) {
      std::copy(&s_.q[row * c.q_dim()], &s_.q[(row + n) * c.q_dim()], &s_.sink_q[row * c.q_dim()]);
      RopeRows(&s_.sink_q[row * c.q_dim()], &s_.slots[row], n, c.n_heads);
    }
    row += n;
  }
  RopeRows(s_.q.data(), s_.positions.data(), rows, c.n_heads);
  RopeRows(s_.k.data(), s_.positions.data(), rows, c.n_kv_heads);
  int64_t r = 0;
  for (const SequenceStep& st : steps) {
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    WriteKv(pool_, layer, *st.pages, st.first_pos, n, &s_.k[r * c.kv_dim()], &s_.v[r * c.kv_dim()]);
    r += n;
  }
  Attention(layer, steps);
  LinearAttention(layer, steps);
  if (observer_) Observe(layer, steps);
  MatMul(w.wo, s_.attn.data(), rows, s_.xn.data(), threads_);
  AddInPlace(s_.x.data(), s_.xn.data(), rows * c.hidden);

  RmsNorm(s_.x.data(), w.ffn_norm, s_.xn.data(), rows, c.hidden, c.rms_eps);
  MatMul(w.w_gate, s_.xn.data(), rows, s_.gate.data(), threads_);
  MatMul(w.w_up, s_.xn.data(), rows, s_.up.data(), threads_);
  SwiGlu(s_.gate.data(), s_.up.data(), s_.gate.data(), rows * c.ffn_hidden);
  MatMul(w.w_down, s_.gate.data(), rows, s_.xn.data(), threads_);
  AddInPlace(s_.x.data(), s_.xn.data(), rows * c.hidden);
}

void CpuBackend::RopeRows(float* x, const int32_t* positions, int64_t rows, int n_heads) {
  const ModelConfig& c = model_.config;
  const RopeParams rope{c.head_dim, c.rope_dim, c.rope_base, c.rope_freq_scale};
  const int32_t* past = std::find_if(positions, positions + rows, [&](int32_t p) { return p >= c.context_length; });
  if (past == positions + rows) {
    Rope(x, positions, rows, n_heads, rope);
    return;
  }
  // Position 0 turns nothing (cos 1, sin 0): those rows wait for the precise path.
  for (int64_t r = 0; r < rows; ++r) s_.rope_positions[r] = positions[r] < c.context_length ? positions[r] : 0;
  Rope(x, s_.rope_positions.data(), rows, n_heads, rope);
  for (int64_t r = 0; r < rows; ++r) {
    if (positions[r] >= c.context_length) RopePastContext(x + r * n_heads * c.head_dim, positions[r], n_heads);
  }
}

// RopeAngles' double path (kernels/common/rope_math.h).
void CpuBackend::RopePastContext(float* x, int32_t pos, int n_heads) const {
  const ModelConfig& c = model_.config;
  for (int i = 0; 2 * i < c.rope_dim; ++i) {
    float cs, sn;
    RopeCosSin(rope_, pos, i, &cs, &sn);
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + static_cast<int64_t>(h) * c.head_dim + 2 * i;
      const float x0 = xh[0], x1 = xh[1];
      xh[0] = x0 * cs - x1 * sn;
      xh[1] = x1 * cs + x0 * sn;
    }
  }
}

void CpuBackend::FindActKeySets(int32_t layer, const SequenceStep& step, int64_t first_row, bool sink_q) {
  const ModelConfig& c = model_.config;
  const int32_t prompt = step.attention->prompt_tokens();
  const size_t per_thread = static_cast<size_t>(c.n_heads) * prompt;
  s_.act_mass.assign(per_thread * threads_.num_threads(), 0.0);
  const PagedKv kv = LayerView(pool_, layer, *step.pages, prompt);
  const SequenceAttentionParams& params = step.attention->layer(layer);
  const int64_t blocks = (prompt + kQueriesPerTask - 1) / kQueriesPerTask;
  // Each thread sums into its own copy; the copies are added in thread
  // order. Which thread takes which block varies, so the sums may differ
  // in their last bits from run to run, far below any tau comparison.
  threads_.ParallelFor(blocks * c.n_kv_heads, [&](int64_t i, int thread) {
    const int32_t q0 = static_cast<int32_t>(i / c.n_kv_heads) * kQueriesPerTask;
    const int kv_head = static_cast<int>(i % c.n_kv_heads);
    AttentionQueries q;
    q.q = &s_.q[(first_row + q0) * c.q_dim()];
    q.positions = &s_.positions[first_row + q0];
    q.n_queries = std::min(kQueriesPerTask, prompt - q0);
    q.n_q_heads = c.n_heads;
    // The probabilities the layer's attention weights values with: sink keys
    // scored with the queries at their cache slots, as PagedAttentionKvHead.
    if (sink_q) q.sink_q = &s_.sink_q[(first_row + q0) * c.q_dim()];
    const int group = c.n_heads / c.n_kv_heads;
    double* mass = &s_.act_mass[thread * per_thread + static_cast<size_t>(kv_head) * group * prompt];
    AttentionColumnMassKvHead(q, kv, params, kv_head, mass);
  });
  for (int t = 1; t < threads_.num_threads(); ++t) {
    for (size_t k = 0; k < per_thread; ++k) s_.act_mass[k] += s_.act_mass[t * per_thread + k];
  }
  step.act_sets->SetFromColumnMass(layer, std::span<const double>(s_.act_mass).first(per_thread));
}

void CpuBackend::Attention(int32_t layer, std::span<const SequenceStep> steps) {
  const ModelConfig& c = model_.config;
  // Tasks: (sequence, query block, kv head).
  struct Task {
    int64_t first_row;
    int32_t n_queries;
    int32_t kv_head;
    const SequenceStep* step;
    bool sink_q;
    bool quest;  // one query whose keys Quest selects
  };
  std::vector<Task> tasks;
  int64_t row = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const SequenceStep& st = steps[i];
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    if (st.act_sets != nullptr && st.act_sets->needs(layer)) FindActKeySets(layer, st, row, s_.sink_steps[i] != 0);
    // Queries past the prompt of a Quest layer each select their own pages.
    int32_t dense_n = n;
    while (dense_n > 0 && st.attention != nullptr && st.attention->quest(layer, st.first_pos + dense_n - 1)) --dense_n;
    for (int32_t q0 = 0, take = 0; q0 < dense_n; q0 += take) {
      take = std::min(kQueriesPerTask, dense_n - q0);
      // The kernel sums a lone query in decode order: a batch's last query
      // joins the task before it so that it keeps the batched order.
      if (dense_n - q0 - take == 1) ++take;
      for (int32_t g = 0; g < c.n_kv_heads; ++g) {
        tasks.push_back({row + q0, take, g, &st, s_.sink_steps[i] != 0, false});
      }
    }
    for (int32_t q0 = dense_n; q0 < n; ++q0) {
      for (int32_t g = 0; g < c.n_kv_heads; ++g) tasks.push_back({row + q0, 1, g, &st, s_.sink_steps[i] != 0, true});
    }
    row += n;
  }
  SequenceAttentionParams dense;
  dense.heads = dense_heads_.data();
  threads_.ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t i, int) {
    const Task& t = tasks[i];
    // Each sequence brings its own policy: one step, per-sequence parameters.
    const SequenceAttentionParams& params = t.step->act_sets != nullptr ? t.step->act_sets->layer(layer)
                                            : t.step->attention != nullptr ? t.step->attention->layer(layer)
                                                                           : dense;
    const int32_t num_tokens = t.step->first_pos + static_cast<int32_t>(t.step->tokens.size());
    const PagedKv kv = LayerView(pool_, layer, *t.step->pages, num_tokens);
    AttentionQueries q;
    q.q = &s_.q[t.first_row * c.q_dim()];
    q.positions = &s_.positions[t.first_row];
    q.n_queries = t.n_queries;
    q.n_q_heads = c.n_heads;
    if (t.sink_q) q.sink_q = &s_.sink_q[t.first_row * c.q_dim()];
    if (t.quest) {
      thread_local std::vector<KeyRange> ranges;
      const int group = c.n_heads / c.n_kv_heads;
      const int32_t budget_pages = t.step->attention->quest_token_budget() / kv.page_size;
      if (SelectQuestPages(&s_.q[t.first_row * c.q_dim() + static_cast<int64_t>(t.kv_head) * group * c.head_dim],
                           group, kv, t.kv_head, params.sink_tokens, params.window_tokens, q.positions[0],
                           budget_pages, ranges)) {
        q.key_ranges = ranges.data();
        q.num_key_ranges = static_cast<int32_t>(ranges.size());
      }
    }
    if (t.step->linear != nullptr) q.lse = &s_.lse[t.first_row * c.n_heads];
    PagedAttentionKvHead(q, kv, params, t.kv_head, &s_.attn[t.first_row * c.q_dim()]);
  });
}

void CpuBackend::LinearAttention(int32_t layer, std::span<const SequenceStep> steps) {
  const ModelConfig& c = model_.config;
  const int hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  int64_t row = 0;
  for (const SequenceStep& st : steps) {
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    const int64_t first_row = row;
    row += n;
    if (st.linear == nullptr) continue;
    LinearAttentionState& state = *st.linear;
    state.AllocateHostStates();
    const SequenceAttentionParams& params = st.attention->layer(layer);
    const int32_t sinks = params.sink_tokens;
    // Query i folds keys [sinks, fold_end(i)): those left behind its window.
    const auto fold_end = [&](int32_t pos) { return LinearFoldEnd(sinks, params.window_tokens, pos); };
    if (st.first_pos == 0) state.ResetLayer(layer);
    const int32_t folded = std::max(sinks, state.folded_end[layer]);
    const int32_t num_tokens = st.first_pos + n;
    const PagedKv kv = LayerView(pool_, layer, *st.pages, num_tokens);
    auto load = [&](const fp16_t* base, int g, int32_t t, float* out) {
      const fp16_t* src = kv.Row(base, g, t);
      for (int d = 0; d < hd; ++d) out[d] = Fp16ToFloat(src[d]);
    };
    // One task per (query, KV head): the state's part, the keys folded
    // since it was last updated, and the exact part, in one normalisation.
    threads_.ParallelFor(static_cast<int64_t>(n) * c.n_kv_heads, [&](int64_t task, int) {
      const int32_t i = static_cast<int32_t>(task / c.n_kv_heads);
      const int g = static_cast<int>(task % c.n_kv_heads);
      const int32_t pos = st.first_pos + i;
      thread_local std::vector<float> q, num, k, v;
      q.resize(hd), num.resize(hd), k.resize(hd), v.resize(hd);
      for (int h = g * group; h < (g + 1) * group; ++h) {
        const float scale = params.heads[h].logit_scale;
        const float* qh = &s_.q[(first_row + i) * c.q_dim() + static_cast<int64_t>(h) * hd];
        for (int d = 0; d < hd; ++d) q[d] = qh[d] * scale;
        float den_f = 0.0f;
        ReadLinearState(state.head(layer, g), q.data(), hd, num.data(), &den_f);
        double den = den_f;
        for (int32_t j = folded; j < fold_end(pos); ++j) {
          load(kv.keys, g, j, k.data());
          load(kv.values, g, j, v.data());
          float x = 0.0f;
          for (int d = 0; d < hd; ++d) x += q[d] * k[d];
          const float w = Taylor2(x);
          for (int d = 0; d < hd; ++d) num[d] += w * v[d];
          den += w;
        }
        if (den <= 0.0) continue;
        // out = (o_exact · e^lse + num) / (e^lse + den)
        float* out = &s_.attn[(first_row + i) * c.q_dim() + static_cast<int64_t>(h) * hd];
        const double lse = s_.lse[(first_row + i) * c.n_heads + h];
        const double exact = lse == -INFINITY ? 0.0 : 1.0 / (1.0 + den * std::exp(-lse));
        for (int d = 0; d < hd; ++d) out[d] = static_cast<float>(exact * out[d] + (1.0 - exact) * num[d] / den);
      }
    });
    // Keys the next query no longer sees exactly join the state.
    const int32_t next_end = fold_end(num_tokens);
    threads_.ParallelFor(c.n_kv_heads, [&](int64_t g, int) {
      thread_local std::vector<float> k, v;
      k.resize(hd), v.resize(hd);
      for (int32_t j = folded; j < next_end; ++j) {
        load(kv.keys, static_cast<int>(g), j, k.data());
        load(kv.values, static_cast<int>(g), j, v.data());
        FoldKey(k.data(), v.data(), hd, state.head(layer, static_cast<int32_t>(g)));
      }
    });
    state.folded_end[layer] = std::max(folded, next_end);
  }
}

void CpuBackend::Observe(int32_t layer, std::span<const SequenceStep> steps) {
  const ModelConfig& c = model_.config;
  int64_t row = 0;
  for (const SequenceStep& st : steps) {
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    AttentionObservation o;
    o.layer = layer;
    o.step = &st;
    o.q = &s_.q[row * c.q_dim()];
    o.positions = &s_.positions[row];
    o.kv = LayerView(pool_, layer, *st.pages, st.first_pos + n);
    observer_(o);
    row += n;
  }
}

}  // namespace attnserve
