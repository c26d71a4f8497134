#include "engine/backend/cuda/step_metadata.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/taylor.h"

namespace attnserve {

absl::StatusOr<StepMetadata> BuildStepMetadata(const ModelConfig& c, KvCachePool& pool,
                                               std::span<const SequenceStep> steps,
                                               std::span<float* const> linear_states,
                                               std::span<const AttentionHeadParams> dense_heads,
                                               StepStaging& staging) {
  const int32_t page_size = pool.shape().page_size;
  const int32_t n_seqs = static_cast<int32_t>(steps.size());
  if (linear_states.size() != steps.size()) return absl::InternalError("BuildStepMetadata: linear states per step");
  StagingArena& index = staging.index;
  StagingArena& data = staging.data;
  StepMetadata m;
  m.n_seqs = n_seqs;

  // Rows, positions and the rows whose logits are wanted.
  std::vector<int32_t> tokens, positions, slots, row_seq, logit_rows, pick_rows, first_row(n_seqs);
  std::vector<TokenPick> picks;
  bool any_slots = false;
  for (int32_t i = 0; i < n_seqs; ++i) {
    const SequenceStep& st = steps[i];
    if (st.act_sets != nullptr && !st.act_sets->complete()) {
      m.act_prompt_steps.push_back(i);
      m.wants_lse = true;
    }
    if (st.linear != nullptr && linear_states[i] == nullptr) {
      return absl::InternalError("BuildStepMetadata: a linear sequence without device states");
    }
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    first_row[i] = static_cast<int32_t>(tokens.size());
    const bool cache_slots = NeedsSinkSlots(st);
    for (int32_t j = 0; j < n; ++j) {
      const int32_t pos = st.first_pos + j;
      tokens.push_back(st.tokens[j]);
      positions.push_back(pos);
      slots.push_back(cache_slots ? CacheSlot(st.attention->layer(0), pos) : pos);
      row_seq.push_back(i);
      if (st.logits == LogitsWanted::kAll || (st.logits == LogitsWanted::kLast && j == n - 1)) {
        logit_rows.push_back(first_row[i] + j);
      }
      if (st.logits == LogitsWanted::kLastPick && j == n - 1) {
        pick_rows.push_back(first_row[i] + j);
        m.pick_steps.push_back(i);
        TokenPick staged = *st.pick;
        staged.edits = staged.n_edits > 0 ? data.Append(st.pick->edits, st.pick->n_edits) : nullptr;
        picks.push_back(staged);
      }
    }
    any_slots |= cache_slots;
    m.max_tokens = std::max(m.max_tokens, st.first_pos + n);
    m.max_blocks_per_seq = std::max(m.max_blocks_per_seq, BlocksTouched(st.first_pos, n, page_size));
  }
  m.rows = static_cast<int64_t>(tokens.size());
  m.first_row = first_row;
  m.n_pick_rows = static_cast<int64_t>(pick_rows.size());
  logit_rows.insert(logit_rows.end(), pick_rows.begin(), pick_rows.end());
  m.picks = index.Append(picks);
  m.n_logit_rows = static_cast<int64_t>(logit_rows.size());
  m.tokens = index.Append(tokens);
  m.positions = index.Append(positions);
  m.slots = any_slots ? index.Append(slots) : nullptr;
  m.row_seq = index.Append(row_seq);
  m.logit_rows = index.Append(logit_rows);
  m.decode_max_tokens = DecodeTokensBound(m.max_tokens);

  // Page tables, and the key ranges Quest writes for each of its rows (one
  // set for all layers: the layers run one after the other).
  std::vector<const int32_t*> pages(n_seqs), slices(n_seqs);
  std::vector<int64_t> range_at(m.rows, -1), count_at(m.rows, -1);
  int64_t n_ranges = 0, n_counts = 0;
  for (int32_t i = 0; i < n_seqs; ++i) {
    const SequenceStep& st = steps[i];
    pages[i] = data.Append(st.pages->pages);
    if (st.pages->packed()) slices[i] = data.Append(st.pages->slices.table);
    if (st.attention == nullptr) continue;
    const int32_t budget_pages = st.attention->quest_token_budget() / page_size;
    for (int32_t j = 0; j < static_cast<int32_t>(st.tokens.size()); ++j) {
      if (!st.attention->quest(c.n_layers - 1, st.first_pos + j)) continue;
      range_at[first_row[i] + j] = n_ranges;
      count_at[first_row[i] + j] = n_counts;
      n_ranges += static_cast<int64_t>(c.n_kv_heads) * (budget_pages + 1);
      n_counts += c.n_kv_heads;
    }
  }
  // Written by the selection before the decode kernel reads them, in every
  // layer that selects: device memory only.
  KeyRange* ranges = n_ranges > 0 ? staging.outputs.Allocate<KeyRange>(n_ranges) : nullptr;
  int32_t* range_counts = n_counts > 0 ? staging.outputs.Allocate<int32_t>(n_counts) : nullptr;

  // Every row's entry and every sequence's append, for all layers: written
  // in place, since at large batches they are most of the step's bytes.
  SequenceAttentionParams dense;
  dense.heads = dense_heads.data();
  dense = StageParams(dense, c.n_heads, data);
  const std::vector<const PlanStore::Staged*> staged = staging.plans.Stage(c, steps, data);
  std::vector<PagedKv> views(n_seqs);
  KvAppendSequence* const append_at = index.Allocate<KvAppendSequence>(n_seqs);
  DecodeSequence* const entries_at = index.Allocate<DecodeSequence>(m.rows);
  m.append = append_at;
  m.entries = entries_at;
  KvAppendSequence* append = index.Staged(append_at);
  DecodeSequence* entries = index.Staged(entries_at);
  // A decode step (a row per sequence): every row is a decode query, and
  // the entries are the decode kernel's, not staged twice.
  const bool decode_step = m.rows == n_seqs;
  std::vector<DecodeSequence> decode;
  std::vector<PrefillTile> tiles;
  const int32_t tile_queries = PrefillQueriesPerTile(c.n_heads / c.n_kv_heads);
  std::vector<QuestSelectSequence> quest;
  std::vector<int32_t> quest_rows;
  m.quest_first_layer = c.n_layers;
  for (int32_t i = 0; i < n_seqs; ++i) {
    const SequenceStep& st = steps[i];
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    PagedKv kv = LayerView(pool, 0, *st.pages, st.first_pos + n);
    kv.page_table = pages[i];
    if (st.pages->packed()) kv.head_slices = slices[i];
    views[i] = kv;
    append[i] = {kv, st.first_pos, first_row[i], n};
    for (int32_t j = 0; j < n; ++j) {
      const int32_t r = first_row[i] + j, pos = st.first_pos + j;
      DecodeSequence& d = entries[r];
      d = DecodeSequence{};
      d.kv = kv;
      if (staged[i] == nullptr) {
        d.params = dense;
      } else {
        d.layer_params = staged[i]->device;
      }
      d.query_pos = pos;
      d.row = r;
      if (range_at[r] < 0 && n > 1) {
        // Consecutive queries of the step share a tile while it has room
        // (Quest's trailing queries end the step's run).
        if (j == 0 || tiles.empty() || tiles.back().n_queries == tile_queries) tiles.push_back({r, 0});
        ++tiles.back().n_queries;
        continue;
      }
      if (range_at[r] >= 0) {
        // Quest's queries go to the decode kernel in every layer, their
        // keys selected in the plan's sparse layers.
        const SequenceAttentionParams& p = st.attention->layer(0);
        QuestSelectSequence q;
        q.kv = kv;
        q.first_layer = st.attention->quest_dense_layers();
        q.query_pos = pos;
        q.sink_tokens = p.sink_tokens;  // the sequence's visible set, every layer's
        q.window_tokens = p.window_tokens;
        q.budget_pages = st.attention->quest_token_budget() / page_size;
        q.key_ranges = ranges + range_at[r];
        q.num_key_ranges = range_counts + count_at[r];
        d.key_ranges = q.key_ranges;
        d.num_key_ranges = q.num_key_ranges;
        d.key_ranges_stride = q.budget_pages + 1;
        d.key_ranges_from_layer = q.first_layer;
        quest.push_back(q);
        quest_rows.push_back(r);
        m.quest_first_layer = std::min(m.quest_first_layer, q.first_layer);
        // Pages of the context rounded up as the split grid's: the
        // selection's workspace stride then stays that of the graph.
        m.quest_max_pages = std::max(m.quest_max_pages, (DecodeTokensBound(pos + 1) + page_size - 1) / page_size);
      }
      if (!decode_step) decode.push_back(d);
    }
  }
  m.n_decode = decode_step ? static_cast<int32_t>(m.rows) : static_cast<int32_t>(decode.size());
  m.decode = decode_step ? m.entries : index.Append(decode);
  m.n_tiles = static_cast<int32_t>(tiles.size());
  m.tiles = index.Append(tiles);
  m.n_quest = static_cast<int32_t>(quest.size());
  m.quest = index.Append(quest);
  m.quest_rows = index.Append(quest_rows);

  // The linear mode, layer by layer, as CpuBackend::LinearAttention: query at
  // pos reads the state and, exactly weighted, the keys that left its window
  // since the last fold; the keys the next query no longer sees are folded
  // after.
  m.folded_end.resize(n_seqs);
  for (int32_t i = 0; i < n_seqs; ++i) {
    if (steps[i].linear != nullptr) m.folded_end[i] = steps[i].linear->folded_end;
  }
  m.linear.resize(c.n_layers);
  std::vector<LinearReadSequence> linear_read;
  std::vector<LinearFoldSequence> linear_fold;
  for (int32_t l = 0; l < c.n_layers; ++l) {
    linear_read.clear(), linear_fold.clear();
    for (int32_t i = 0; i < n_seqs; ++i) {
      const SequenceStep& st = steps[i];
      if (st.linear == nullptr) continue;
      const SequenceAttentionParams& p = staged[i]->layers[l];
      const int32_t n = static_cast<int32_t>(st.tokens.size());
      const PagedKv kv = views[i].AtLayer(l);
      const auto fold_end = [&](int32_t pos) { return LinearFoldEnd(p.sink_tokens, p.window_tokens, pos); };
      const int32_t folded = st.first_pos == 0 ? p.sink_tokens : std::max(p.sink_tokens, m.folded_end[i][l]);
      float* states = linear_states[i] + l * st.linear->layer_floats();
      for (int32_t j = 0; j < n; ++j) {
        LinearReadSequence rs;
        rs.states = states;
        rs.heads = p.heads;
        rs.row = first_row[i] + j;
        rs.kv = kv;
        rs.pending_begin = folded;
        rs.pending_end = std::max(folded, fold_end(st.first_pos + j));
        linear_read.push_back(rs);
      }
      const int32_t next_end = fold_end(st.first_pos + n);
      if (next_end > folded) linear_fold.push_back({kv, folded, next_end, states});
      m.folded_end[i][l] = std::max(folded, next_end);
      m.wants_lse = true;
    }
    LinearLayerWork& w = m.linear[l];
    w.n_rows = static_cast<int32_t>(linear_read.size());
    w.read = index.Append(linear_read);
    w.n_folds = static_cast<int32_t>(linear_fold.size());
    w.fold = index.Append(linear_fold);
  }
  return m;
}

int32_t DecodeTokensBound(int32_t max_tokens) {
  int32_t bound = kDecodeSplitKeys;
  while (bound < max_tokens && bound < (1 << 30)) bound *= 2;
  return std::max(bound, max_tokens);
}

bool GraphReplayable(const StepMetadata& m) {
  return m.rows == m.n_seqs && m.n_pick_rows == m.n_logit_rows && m.act_prompt_steps.empty();
}

std::vector<uintptr_t> LaunchSignature(const StepMetadata& m) {
  const auto a = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  std::vector<uintptr_t> s = {static_cast<uintptr_t>(m.rows),
                              static_cast<uintptr_t>(m.n_seqs),
                              a(m.tokens),
                              a(m.positions),
                              a(m.slots),
                              a(m.row_seq),
                              a(m.logit_rows),
                              static_cast<uintptr_t>(m.n_logit_rows),
                              static_cast<uintptr_t>(m.n_pick_rows),
                              a(m.picks),
                              static_cast<uintptr_t>(m.decode_max_tokens),
                              static_cast<uintptr_t>(m.max_blocks_per_seq),
                              static_cast<uintptr_t>(m.wants_lse)};
  s.insert(s.end(), {a(m.append), a(m.entries), a(m.decode), static_cast<uintptr_t>(m.n_decode), a(m.tiles),
                     static_cast<uintptr_t>(m.n_tiles), a(m.quest), a(m.quest_rows), static_cast<uintptr_t>(m.n_quest),
                     static_cast<uintptr_t>(m.quest_first_layer), static_cast<uintptr_t>(m.quest_max_pages)});
  for (const LinearLayerWork& w : m.linear) {
    s.insert(s.end(), {a(w.read), static_cast<uintptr_t>(w.n_rows), a(w.fold), static_cast<uintptr_t>(w.n_folds)});
  }
  return s;
}

}  // namespace attnserve
