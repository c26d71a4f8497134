// The attention of a step's layer on the GPU: decode and prefill launches,
// Quest's selection, ACT's key-set pass, the linear mode's state.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/cuda/cuda_backend_state.h"
#include "engine/common/status_macros.h"
#include "kernels/cuda/column_mass.h"
#include "kernels/cuda/linear_state.h"
#include "kernels/cuda/paged_decode.h"
#include "kernels/cuda/paged_prefill.h"
#include "kernels/cuda/quest_select.h"
#include "kernels/cuda/transformer_ops.h"

namespace attnserve {

absl::Status CudaBackend::State::DecodeRows(int32_t l, const DecodeSequence* entries, int64_t n,
                                            const StepMetadata& m) {
  const ModelConfig& c = model.config;
  // Entries in launches whose split partials fit the workspace; each entry
  // names its own row of q and out.
  const size_t per_entry = DecodeAttentionWorkspaceBytes(1, c.n_heads, c.head_dim, m.decode_max_tokens);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(kMaxGridYZ, decode_ws.size() / per_entry));
  for (int64_t i = 0; i < n; i += chunk) {
    DecodeAttentionArgs a;
    a.seqs = entries + i;
    a.n_seqs = static_cast<int32_t>(std::min(chunk, n - i));
    a.layer = l;
    a.max_tokens = m.decode_max_tokens;
    a.q = q.as<float>();
    a.sink_q = m.slots != nullptr ? sink_q.as<float>() : nullptr;
    a.n_q_heads = c.n_heads;
    a.n_kv_heads = c.n_kv_heads;
    a.head_dim = c.head_dim;
    a.out = attn.as<float>();
    a.lse = m.wants_lse ? lse.as<float>() : nullptr;
    ATTN_RETURN_IF_ERROR(DecodeAttentionCuda(a, decode_ws.data(), decode_ws.size(), stream));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::State::PrefillRows(int32_t l, const DecodeSequence* entries, const PrefillTile* tiles,
                                             int32_t n_tiles, const StepMetadata& m) {
  const ModelConfig& c = model.config;
  PrefillAttentionArgs a;
  a.entries = entries;
  a.tiles = tiles;
  a.n_tiles = n_tiles;
  a.layer = l;
  a.q = q.as<float>();
  a.sink_q = m.slots != nullptr ? sink_q.as<float>() : nullptr;
  a.out = attn.as<float>();
  a.lse = m.wants_lse ? lse.as<float>() : nullptr;
  a.n_q_heads = c.n_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  return PrefillAttentionCuda(a, stream);
}

// As CpuBackend::FindActKeySets, from the prompt rows' outputs of the plan's
// parameters (already run): the column sums of their probabilities, and the
// sets found on the host.
absl::Status CudaBackend::State::FindActKeySets(int32_t l, const StepMetadata& m, const SequenceStep& st,
                                                int32_t first_row) {
  const ModelConfig& c = model.config;
  const int32_t prompt = st.attention->prompt_tokens();
  const size_t n_mass = static_cast<size_t>(c.n_heads) * prompt;
  ATTN_RETURN_IF_ERROR(ReserveData(act_mass, n_mass * sizeof(double)));
  ATTN_RETURN_IF_ERROR(Cuda(cudaMemsetAsync(act_mass.data(), 0, n_mass * sizeof(double), stream), "cudaMemsetAsync(act mass)"));
  ColumnMassArgs a;
  a.seqs = m.entries + first_row;
  a.n_queries = prompt;
  a.layer = l;
  a.q = q.as<float>();
  a.sink_q = m.slots != nullptr ? sink_q.as<float>() : nullptr;
  a.lse = lse.as<float>();
  a.n_q_heads = c.n_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  a.mass = act_mass.as<double>();
  a.n_keys = prompt;
  ATTN_RETURN_IF_ERROR(ColumnMassCuda(a, stream));
  act_mass_host.resize(n_mass);
  ATTN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(act_mass_host.data(), act_mass.data(), n_mass * sizeof(double),
                                            cudaMemcpyDeviceToHost, stream),
                            "cudaMemcpyAsync(act mass)"));
  ATTN_RETURN_IF_ERROR(CudaStreamSync(stream));
  st.act_sets->SetFromColumnMass(l, act_mass_host);
  return absl::OkStatus();
}

// The step's rows of layer l again, with the layer's parameters that now
// carry ACT's key sets, in prefill tiles.
absl::Status CudaBackend::State::RerunWithKeySets(int32_t l, const StepMetadata& m, const SequenceStep& st,
                                                  int32_t first_row) {
  const ModelConfig& c = model.config;
  const int32_t n = static_cast<int32_t>(st.tokens.size());
  const int32_t per_tile = PrefillQueriesPerTile(c.n_heads / c.n_kv_heads);
  const DecodeSequence* staged = staging.index.HostView(m.entries + first_row);
  const DecodeSequence* entries = nullptr;
  const PrefillTile* tiles = nullptr;
  int32_t n_tiles = 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    act_arena.Reset(act_meta.data());
    const SequenceAttentionParams params = StageParams(st.act_sets->layer(l), c.n_heads, act_arena);
    std::vector<DecodeSequence> rows(staged, staged + n);
    for (DecodeSequence& d : rows) {
      d.params = params;
      d.layer_params = nullptr;
    }
    std::vector<PrefillTile> tile_list;
    for (int32_t i = 0; i < n; i += per_tile) tile_list.push_back({i, std::min(per_tile, n - i)});
    entries = act_arena.Append(rows);
    tiles = act_arena.Append(tile_list);
    n_tiles = static_cast<int32_t>(tile_list.size());
    if (act_arena.size() <= act_meta.size()) break;
    ATTN_RETURN_IF_ERROR(ReserveData(act_meta, act_arena.size() + act_arena.size() / 2));
  }
  ATTN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(act_meta.data(), act_arena.data(), act_arena.size(), cudaMemcpyHostToDevice,
                                            stream),
                            "cudaMemcpyAsync(act entries)"));
  ATTN_RETURN_IF_ERROR(PrefillRows(l, entries, tiles, n_tiles, m));
  // The staging buffer is reused by the next rerun: wait for this copy.
  return CudaStreamSync(stream);
}

absl::Status CudaBackend::State::Attention(int32_t l, const StepMetadata& m, std::span<const SequenceStep> steps) {
  const ModelConfig& c = model.config;
  if (m.n_quest > 0 && l >= m.quest_first_layer) {
    ATTN_RETURN_IF_ERROR(GatherRowsCuda(q.as<float>(), m.quest_rows, m.n_quest, c.q_dim(), quest_q.as<float>(), stream));
    QuestSelectArgs qa;
    qa.seqs = m.quest;
    qa.n_seqs = m.n_quest;
    qa.layer = l;
    qa.max_pages = m.quest_max_pages;
    qa.q = quest_q.as<float>();
    qa.n_q_heads = c.n_heads;
    qa.n_kv_heads = c.n_kv_heads;
    qa.head_dim = c.head_dim;
    ATTN_RETURN_IF_ERROR(QuestSelectCuda(qa, quest_ws.data(), quest_ws.size(), stream));
  }
  ATTN_RETURN_IF_ERROR(DecodeRows(l, m.decode, m.n_decode, m));
  ATTN_RETURN_IF_ERROR(PrefillRows(l, m.entries, m.tiles, m.n_tiles, m));
  // Steps sharing key sets (a request's completions) run again with the
  // sets their first step found.
  std::vector<const ActKeySets*> found;
  for (const int32_t i : m.act_prompt_steps) {
    const ActKeySets* sets = steps[i].act_sets;
    if (sets->needs(l)) {
      ATTN_RETURN_IF_ERROR(FindActKeySets(l, m, steps[i], m.first_row[i]));
      found.push_back(sets);
    }
    if (std::find(found.begin(), found.end(), sets) != found.end()) {
      ATTN_RETURN_IF_ERROR(RerunWithKeySets(l, m, steps[i], m.first_row[i]));
    }
  }
  const LinearLayerWork& linear = m.linear[l];
  if (linear.n_rows > 0) {
    LinearReadArgs la;
    la.seqs = linear.read;
    la.n_seqs = linear.n_rows;
    la.q = q.as<float>();
    la.lse = lse.as<float>();
    la.out = attn.as<float>();
    la.n_q_heads = c.n_heads;
    la.n_kv_heads = c.n_kv_heads;
    la.head_dim = c.head_dim;
    ATTN_RETURN_IF_ERROR(JoinLinearStateCuda(la, stream));
  }
  return FoldKeysCuda(linear.fold, linear.n_folds, c.n_kv_heads, c.head_dim, stream);
}

}  // namespace attnserve
