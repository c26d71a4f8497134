// BuildStepMetadata, the host half of a GPU step, on a host KV pool: the
// arenas' structs, copied to their "device" buffers (here host memory), name
// each row's query, keys, policy and Quest / linear work as the CPU backend
// would run them; decode steps of one batch size launch alike (CUDA graphs).
#include "engine/backend/cuda/step_metadata.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "tests/unit/step_metadata_fixture.h"

namespace attnserve {
namespace {

using StepMetadataTest = StepMetadataFixture;

TEST_F(StepMetadataTest, RowsKeysPoliciesQuestAndLinearWork) {
  const PageTable dense_table = Table({3, 7}, 20);
  const PageTable quest_table = Table({1}, 0);
  const PageTable linear_table = Table({2}, 10);
  PolicySpec quest;
  quest.mode = SparseSpec{16, 1};  // one page of budget; layer 0 dense
  PolicySpec linear;
  linear.mode = LinearSpec{4, 2};
  const auto quest_plan = Plan(quest, c_, 3);
  const auto linear_plan = Plan(linear, c_, 8);
  LinearAttentionState linear_state(c_.n_layers, c_.n_kv_heads, c_.head_dim);
  linear_state.folded_end = {7, 5};
  const std::vector<int32_t> decode_token = {11}, prefill = {1, 2, 3, 4, 5}, linear_tokens = {6, 7, 8};
  std::vector<SequenceStep> steps(3);
  steps[0] = {&dense_table, decode_token, 20, LogitsWanted::kLast};
  steps[1] = {&quest_table, prefill, 0, LogitsWanted::kAll, quest_plan.get()};
  steps[2] = {&linear_table, linear_tokens, 10, LogitsWanted::kNone, linear_plan.get(), nullptr, &linear_state};
  std::vector<float> states(4);
  const std::vector<float*> linear_states = {nullptr, nullptr, states.data()};
  const StepMetadata m = Build(steps, linear_states);

  ASSERT_EQ(m.rows, 9);
  EXPECT_EQ(std::vector<int32_t>(m.tokens, m.tokens + 9), (std::vector<int32_t>{11, 1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(std::vector<int32_t>(m.positions, m.positions + 9), (std::vector<int32_t>{20, 0, 1, 2, 3, 4, 10, 11, 12}));
  EXPECT_EQ(std::vector<int32_t>(m.row_seq, m.row_seq + 9), (std::vector<int32_t>{0, 1, 1, 1, 1, 1, 2, 2, 2}));
  ASSERT_EQ(m.n_logit_rows, 6);
  EXPECT_EQ(std::vector<int32_t>(m.logit_rows, m.logit_rows + 6), (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(m.slots, nullptr);
  EXPECT_EQ(m.max_tokens, 21);
  EXPECT_EQ(m.max_blocks_per_seq, 1);
  EXPECT_TRUE(m.wants_lse);

  // Each sequence's append and each row's entry, staged once: layer 0's
  // view, every layer's parameters.
  EXPECT_EQ(m.append[2].first_pos, 10);
  EXPECT_EQ(m.append[2].row_begin, 6);
  EXPECT_EQ(m.append[2].n_tokens, 3);
  EXPECT_EQ(m.append[2].kv.page_table[0], 2);
  for (int32_t r = 0; r < 9; ++r) EXPECT_EQ(m.entries[r].row, r);
  EXPECT_EQ(m.entries[0].layer_params, nullptr);  // dense: its params serve every layer
  EXPECT_NE(m.entries[4].layer_params, nullptr);

  // The single-token step and Quest's queries (positions 3 and 4, past the
  // prompt) go to the decode kernel in every layer, the rest of the
  // multi-token steps in tiles (8 queries for 2 heads per KV head).
  ASSERT_EQ(m.n_decode, 3);
  const std::vector<int32_t> decode_rows = {0, 4, 5};
  for (int32_t i = 0; i < m.n_decode; ++i) EXPECT_EQ(m.decode[i].row, decode_rows[i]);
  ASSERT_EQ(m.n_tiles, 2);
  EXPECT_EQ(m.tiles[0].first_entry, 1);
  EXPECT_EQ(m.tiles[0].n_queries, 3);
  EXPECT_EQ(m.tiles[1].first_entry, 6);
  EXPECT_EQ(m.tiles[1].n_queries, 3);
  // Quest selects from layer 1 on (layer 0 dense).
  ASSERT_EQ(m.n_quest, 2);
  EXPECT_EQ(m.quest_first_layer, 1);
  EXPECT_EQ(m.quest[1].key_ranges - m.quest[0].key_ranges, c_.n_kv_heads * 2);
  // The ranges are the selection's output: device memory, never staged.
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(m.quest[0].key_ranges), outputs_.data());
  EXPECT_GE(reinterpret_cast<const uint8_t*>(m.quest[1].num_key_ranges),
            reinterpret_cast<const uint8_t*>(m.quest[1].key_ranges + 2 * c_.n_kv_heads));
  EXPECT_LE(reinterpret_cast<const uint8_t*>(m.quest[1].num_key_ranges + c_.n_kv_heads),
            outputs_.data() + staging_.outputs.size());
  for (int32_t i = 0; i < m.n_quest; ++i) {
    EXPECT_EQ(m.quest_rows[i], 4 + i);
    EXPECT_EQ(m.quest[i].query_pos, 3 + i);
    EXPECT_EQ(m.quest[i].budget_pages, 1);
    EXPECT_EQ(m.quest[i].first_layer, 1);
    const DecodeSequence& d = m.decode[1 + i];
    EXPECT_EQ(d.key_ranges, m.quest[i].key_ranges);
    EXPECT_EQ(d.num_key_ranges, m.quest[i].num_key_ranges);
    EXPECT_EQ(d.key_ranges_stride, 2);
  }

  for (int32_t l = 0; l < c_.n_layers; ++l) {
    // Each row's query, as layer l reads it, reads its own sequence's keys
    // in this layer's pool, with this layer's parameters.
    const PagedKv want = LayerView(pool_, l, dense_table, 21);
    const DecodeSequence dense_row = AtLayer(m.entries[0], l);
    EXPECT_EQ(dense_row.kv.keys, want.keys);
    EXPECT_EQ(dense_row.kv.values, want.values);
    EXPECT_EQ(dense_row.kv.key_max, want.key_max);
    EXPECT_EQ(dense_row.kv.page_table[1], 7);
    EXPECT_EQ(dense_row.kv.num_tokens, 21);
    EXPECT_EQ(dense_row.query_pos, 20);
    EXPECT_EQ(dense_row.params.heads[3].logit_scale, 0.125f);
    const DecodeSequence quest_row = AtLayer(m.entries[4], l);
    EXPECT_EQ(quest_row.query_pos, 3);
    EXPECT_EQ(quest_row.kv.num_tokens, 5);
    EXPECT_EQ(quest_row.kv.keys, pool_.keys(l));
    EXPECT_EQ(quest_row.params.heads[0].logit_scale, quest_plan->layer(l).heads[0].logit_scale);
    EXPECT_EQ(quest_row.params.window_tokens, quest_plan->layer(l).window_tokens);
    // Quest's ranges bind the decode query only where Quest selects.
    EXPECT_EQ(AtLayer(m.decode[1], l).key_ranges, l == 0 ? nullptr : m.quest[0].key_ranges);
    EXPECT_EQ(m.append[2].kv.AtLayer(l).keys, pool_.keys(l));

    // Linear (window 4, sinks 2): query at p reads keys [folded, p - 3)
    // exactly, and [folded, 10) are folded after the step.
    const int32_t folded = std::max(2, linear_state.folded_end[l]);
    const LinearLayerWork& w = m.linear[l];
    ASSERT_EQ(w.n_rows, 3);
    for (int32_t i = 0; i < 3; ++i) {
      EXPECT_EQ(w.read[i].row, 6 + i);
      EXPECT_EQ(w.read[i].pending_begin, folded);
      EXPECT_EQ(w.read[i].pending_end, std::max(folded, 10 + i - 3));
      EXPECT_EQ(w.read[i].states, states.data() + l * c_.n_kv_heads * (TaylorFeatureCount(64) * 65));
      EXPECT_EQ(w.read[i].heads[1].logit_scale, linear_plan->layer(l).heads[1].logit_scale);
      EXPECT_EQ(w.read[i].kv.keys, pool_.keys(l));
    }
    ASSERT_EQ(w.n_folds, 1);
    EXPECT_EQ(w.fold[0].fold_begin, folded);
    EXPECT_EQ(w.fold[0].fold_end, 10);
    EXPECT_EQ(m.folded_end[2][l], 10);
  }
  EXPECT_EQ(linear_state.folded_end, (std::vector<int32_t>{7, 5}));  // applied by the backend after the step
}

TEST_F(StepMetadataTest, PickedRowsComeAfterTheRowsReturnedWhole) {
  const PageTable a = Table({0}, 4), b = Table({1}, 0), d = Table({2}, 7);
  const std::vector<int32_t> one = {5}, three = {1, 2, 3}, other = {9};
  TokenPick pick_a, pick_d;
  pick_d.temperature = 0.5f;
  pick_d.uniform = 0.25;
  const std::vector<LogitEdit> edits = {{7, 1.5f}, {9, 0.0f, 1.2f, 0.5f, 0.25f, false}};
  pick_d.edits = edits.data();
  pick_d.n_edits = 2;
  std::vector<SequenceStep> steps = {{&a, one, 4, LogitsWanted::kLastPick},
                                     {&b, three, 0, LogitsWanted::kAll},
                                     {&d, other, 7, LogitsWanted::kLastPick}};
  steps[0].pick = &pick_a;
  steps[2].pick = &pick_d;
  const std::vector<float*> no_linear(3, nullptr);
  const StepMetadata m = Build(steps, no_linear);
  ASSERT_EQ(m.n_logit_rows, 5);
  EXPECT_EQ(m.n_pick_rows, 2);
  EXPECT_EQ(std::vector<int32_t>(m.logit_rows, m.logit_rows + 5), (std::vector<int32_t>{1, 2, 3, 0, 4}));
  EXPECT_EQ(m.pick_steps, (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(m.picks[0].temperature, 0.0f);
  EXPECT_EQ(m.picks[1].temperature, 0.5f);
  EXPECT_EQ(m.picks[1].uniform, 0.25);
  // The edits are staged beside the picks: device addresses, same values.
  ASSERT_EQ(m.picks[1].n_edits, 2);
  EXPECT_NE(m.picks[1].edits, edits.data());
  EXPECT_EQ(m.picks[1].edits[1].token, 9);
  EXPECT_EQ(m.picks[1].edits[1].presence, 0.25f);
  EXPECT_EQ(m.picks[0].edits, nullptr);
}

TEST_F(StepMetadataTest, StreamingCachePositionsGiveSlotsToEveryRow) {
  PolicySpec streaming;
  streaming.sink = StreamingSpec{4, 8, StreamingPositions::kCache};
  const auto plan = Plan(streaming, c_, 4);
  const PageTable table = Table({0, 1, 2}, 30);
  const PageTable dense_table = Table({5}, 3);
  const std::vector<int32_t> one = {9}, two = {4, 5};
  const std::vector<SequenceStep> steps = {{&table, one, 30, LogitsWanted::kLast, plan.get()},
                                           {&dense_table, two, 3, LogitsWanted::kLast}};
  const std::vector<float*> no_linear(2, nullptr);
  const StepMetadata m = Build(steps, no_linear);
  ASSERT_NE(m.slots, nullptr);
  // The streaming query's slot is its rank in the kept cache; the dense rows keep their positions.
  EXPECT_EQ(std::vector<int32_t>(m.slots, m.slots + 3), (std::vector<int32_t>{CacheSlot(plan->layer(0), 30), 3, 4}));
  EXPECT_EQ(m.slots[0], 11);
}

TEST_F(StepMetadataTest, ActsPromptStepIsMarkedForItsKeySetPass) {
  const PageTable table = Table({0}, 0), dense_table = Table({1}, 5);
  const std::vector<int32_t> prompt = {1, 2, 3}, one = {4};
  PolicySpec act;
  act.act = ActSpec{0.4f, 0.1f, {1}, {0, 2}};
  const auto plan = Plan(act, c_, 3);
  ActKeySets sets(*plan);
  ASSERT_FALSE(sets.complete());
  const std::vector<SequenceStep> steps = {{&dense_table, one, 5, LogitsWanted::kLast},
                                           {&table, prompt, 0, LogitsWanted::kLast, plan.get(), &sets}};
  const std::vector<float*> no_linear(2, nullptr);
  const StepMetadata m = Build(steps, no_linear);
  EXPECT_EQ(m.act_prompt_steps, std::vector<int32_t>{1});
  EXPECT_EQ(m.first_row, (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(m.wants_lse);
  // Until its sets are found the sequence runs with its plan's parameters.
  for (int32_t l = 0; l < c_.n_layers; ++l) {
    for (int h = 0; h < c_.n_heads; ++h) {
      const DecodeSequence d = AtLayer(m.entries[1], l);
      EXPECT_EQ(d.params.heads[h].reweight_beta, plan->layer(l).heads[h].reweight_beta);
      EXPECT_EQ(d.params.heads[h].reweight_keys_size, 0);
    }
  }
}

TEST_F(StepMetadataTest, DecodeStepsOfOneBatchSizeLaunchAlike) {
  PolicySpec streaming;
  streaming.sink = StreamingSpec{4, 8, StreamingPositions::kOriginal};
  const auto plan = Plan(streaming, c_, 4);
  const std::vector<int32_t> a = {1}, b = {2}, d = {3};
  TokenPick greedy, sampled;
  const std::vector<LogitEdit> edits = {{7, 1.5f}, {9, -1.0f}};
  sampled.temperature = 0.7f;
  sampled.edits = edits.data();
  sampled.n_edits = 2;
  const auto decode = [&](std::vector<SequenceStep> steps) {
    for (size_t i = 0; i < steps.size(); ++i) steps[i].pick = i % 2 == 0 ? &greedy : &sampled;
    return Build(steps, std::vector<float*>(steps.size(), nullptr));
  };
  // Three sequences, then other ones (more pages, a policy, edits) a few
  // hundred tokens on: the same launches, only the staged data differs.
  const PageTable t1 = Table({0}, 5), t2 = Table({1, 2}, 20), t3 = Table({3, 4, 5}, 40);
  const StepMetadata first = decode({{&t1, a, 5, LogitsWanted::kLastPick},
                                     {&t2, b, 20, LogitsWanted::kLastPick},
                                     {&t3, d, 40, LogitsWanted::kLastPick}});
  const std::vector<uintptr_t> signature = LaunchSignature(first);
  EXPECT_TRUE(GraphReplayable(first));
  EXPECT_EQ(first.decode_max_tokens, 256);
  EXPECT_EQ(first.decode, first.entries);  // staged once
  const PageTable u1 = Table({6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, 150), u2 = Table({0, 1}, 30);
  const StepMetadata later = decode({{&u1, a, 150, LogitsWanted::kLastPick, plan.get()},
                                     {&u2, b, 30, LogitsWanted::kLastPick},
                                     {&t1, d, 5, LogitsWanted::kLastPick}});
  EXPECT_TRUE(GraphReplayable(later));
  EXPECT_EQ(LaunchSignature(later), signature);
  // What the kernels take, field by field (not through the signature).
  EXPECT_EQ(later.tokens, first.tokens);
  EXPECT_EQ(later.positions, first.positions);
  EXPECT_EQ(later.row_seq, first.row_seq);
  EXPECT_EQ(later.logit_rows, first.logit_rows);
  EXPECT_EQ(later.picks, first.picks);
  EXPECT_EQ(later.append, first.append);
  EXPECT_EQ(later.decode, first.decode);
  EXPECT_EQ(later.n_decode, first.n_decode);
  EXPECT_EQ(later.decode[0].kv.page_table[9], 15);
  EXPECT_EQ(AtLayer(later.decode[0], 1).params.window_tokens, 8);

  // Another batch size, or a context past the split grid's bound, launches otherwise.
  const StepMetadata two = decode({{&t1, a, 5, LogitsWanted::kLastPick}, {&t2, b, 20, LogitsWanted::kLastPick}});
  EXPECT_NE(LaunchSignature(two), signature);
  const PageTable long_table = Table(std::vector<int32_t>(17, 0), 256);
  const StepMetadata longer = decode({{&long_table, a, 256, LogitsWanted::kLastPick},
                                      {&t2, b, 20, LogitsWanted::kLastPick},
                                      {&t3, d, 40, LogitsWanted::kLastPick}});
  EXPECT_EQ(longer.decode_max_tokens, 512);
  EXPECT_NE(LaunchSignature(longer), signature);
}

TEST_F(StepMetadataTest, DecodeStepsReplayGraphsWhateverTheirPolicies) {
  const PageTable t = Table({0}, 5), empty = Table({1}, 0);
  const std::vector<int32_t> one = {1}, three = {1, 2, 3};
  TokenPick pick;
  const auto build = [&](SequenceStep step) {
    if (step.logits == LogitsWanted::kLastPick) step.pick = &pick;
    std::vector<float> states(1);
    const std::vector<float*> linear_states = {step.linear != nullptr ? states.data() : nullptr};
    return Build(std::span<const SequenceStep>(&step, 1), linear_states);
  };
  EXPECT_TRUE(GraphReplayable(build({&t, one, 5, LogitsWanted::kLastPick})));
  EXPECT_FALSE(GraphReplayable(build({&t, one, 5, LogitsWanted::kLast})));          // its row comes back whole
  EXPECT_FALSE(GraphReplayable(build({&empty, three, 0, LogitsWanted::kLastPick})));  // prefill tiles
  PolicySpec act;
  act.act = ActSpec{0.4f, 0.1f, {1}, {0, 2}};
  const auto act_plan = Plan(act, c_, 1);  // a one-token prompt: its pass is a single-token step
  ActKeySets sets(*act_plan);
  const StepMetadata act_pass = build({&empty, one, 0, LogitsWanted::kLastPick, act_plan.get(), &sets});
  EXPECT_EQ(act_pass.rows, 1);
  EXPECT_FALSE(GraphReplayable(act_pass));

  // Quest's selection grid covers the split grid's bound, not the step's
  // pages: a decode a page further on launches alike.
  PolicySpec quest;
  quest.mode = SparseSpec{16, 1};
  const auto quest_plan = Plan(quest, c_, 3);
  const PageTable q1 = Table({0, 1}, 20), q2 = Table({0, 1, 2}, 40);
  const StepMetadata at20 = build({&q1, one, 20, LogitsWanted::kLastPick, quest_plan.get()});
  const StepMetadata at40 = build({&q2, one, 40, LogitsWanted::kLastPick, quest_plan.get()});
  EXPECT_TRUE(GraphReplayable(at40));
  ASSERT_EQ(at40.n_quest, 1);
  EXPECT_EQ(at40.quest_max_pages, 256 / 16);
  EXPECT_EQ(LaunchSignature(at20), LaunchSignature(at40));

  PolicySpec linear;
  linear.mode = LinearSpec{4, 2};
  const auto linear_plan = Plan(linear, c_, 3);
  LinearAttentionState linear_state(c_.n_layers, c_.n_kv_heads, c_.head_dim);
  const StepMetadata lin = build({&t, one, 5, LogitsWanted::kLastPick, linear_plan.get(), nullptr, &linear_state});
  EXPECT_TRUE(GraphReplayable(lin));
  EXPECT_EQ(lin.linear[0].n_rows, 1);
}

TEST(DecodeTokensBoundTest, PowersOfTwoFromOneSplit) {
  EXPECT_EQ(DecodeTokensBound(1), kDecodeSplitKeys);
  EXPECT_EQ(DecodeTokensBound(256), 256);
  EXPECT_EQ(DecodeTokensBound(257), 512);
  EXPECT_EQ(DecodeTokensBound(5000), 8192);
  EXPECT_EQ(DecodeTokensBound(131072), 131072);
}

}  // namespace
}  // namespace attnserve
