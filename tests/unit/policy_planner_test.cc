// PolicySpec -> AttentionPlan: defaults, the kernel parameters of every
// policy, spans from character offsets, prefill signatures, and an error
// naming its field for every invalid value and combination.
#include "engine/policy/planner.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/policy/head_profile.h"
#include "engine/kv/visible_set.h"
#include "gtest/gtest.h"

namespace attnserve {
namespace {

// SmolLM2-135M's shape.
ModelConfig Smol() {
  ModelConfig c;
  c.architecture = "llama";
  c.n_layers = 30;
  c.n_heads = 9;
  c.n_kv_heads = 3;
  c.head_dim = 64;
  c.context_length = 8192;
  return c;
}

PromptInfo Tokens(int32_t n) {
  PromptInfo p;
  p.num_tokens = n;
  return p;
}

// "<bos>The cat sat on the mat": BOS has no bytes, then 6 tokens.
PromptInfo Text() {
  PromptInfo p;
  p.is_text = true;
  p.text_bytes = 22;
  p.token_offsets = {{0, 0}, {0, 3}, {3, 7}, {7, 11}, {11, 14}, {14, 18}, {18, 22}};
  p.num_tokens = static_cast<int32_t>(p.token_offsets.size());
  return p;
}

StreamingSpec Original(uint32_t window) {
  StreamingSpec s;
  s.window_tokens = window;
  s.positions = StreamingPositions::kOriginal;
  return s;
}

std::shared_ptr<const AttentionPlan> Plan(const PolicySpec& spec, const PromptInfo& prompt = Tokens(32)) {
  absl::StatusOr<std::shared_ptr<const AttentionPlan>> plan = PlanAttention(spec, Smol(), prompt);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : nullptr;
}

const float kDenseScale = 1.0f / std::sqrt(64.0f);

// Profiles of SmolLM2-135M's shape whose retrieval heads are (l, l % 9) for
// even layers l.
HeadProfiles SmolProfiles(const std::vector<std::string>& names) {
  HeadProfile p;
  p.n_layers = 30;
  p.n_heads = 9;
  p.n_kv_heads = 3;
  p.head_dim = 64;
  p.heads.resize(30 * 9);
  for (uint32_t l = 0; l < 30; l += 2) p.retrieval_heads.push_back({l, l % 9});
  HeadProfiles out;
  for (const std::string& name : names) out[name] = p;
  return out;
}

TEST(PolicyPlannerTest, EmptySpecIsDenseWithSignatureZero) {
  const auto plan = Plan(PolicySpec{});
  ASSERT_NE(plan, nullptr);
  EXPECT_EQ(plan->prefill_signature(), 0u);
  EXPECT_TRUE(plan->visible_set().keeps_everything());
  for (int32_t l = 0; l < 30; ++l) {
    const SequenceAttentionParams& p = plan->layer(l);
    EXPECT_EQ(p.window_tokens, 0);
    EXPECT_EQ(p.num_spans, 0);
    for (int32_t h = 0; h < 9; ++h) {
      EXPECT_EQ(p.heads[h].logit_scale, kDenseScale);
      EXPECT_EQ(p.heads[h].first_token_bias, 0.0f);
      EXPECT_EQ(p.heads[h].outside_span_bias, 0.0f);
      EXPECT_EQ(p.heads[h].virtual_sink_logit, -INFINITY);
      EXPECT_EQ(&p.heads[h], &plan->head(l, h));
    }
  }
  EXPECT_EQ(plan->labels().mode, "dense");
  EXPECT_EQ(plan->labels().sink, "full");
  EXPECT_EQ(plan->labels().calibration, "none");
}

TEST(PolicyPlannerTest, StreamingDefaultsToFourSinksAndKeepsZero) {
  PolicySpec spec;
  spec.sink = Original(64);
  const auto plan = Plan(spec);
  EXPECT_EQ(plan->layer(7).sink_tokens, 4);
  EXPECT_EQ(plan->layer(7).window_tokens, 64);
  EXPECT_EQ(plan->labels().sink, "streaming");
  EXPECT_NE(plan->prefill_signature(), 0u);

  StreamingSpec no_sinks = Original(64);
  no_sinks.sink_tokens = 0;
  spec.sink = no_sinks;
  EXPECT_EQ(Plan(spec)->layer(0).sink_tokens, 0);

  // Beyond the context nothing more is kept, so such windows plan alike.
  spec.sink = Original(1u << 31);
  const auto huge = Plan(spec);
  EXPECT_EQ(huge->visible_set().window_tokens, 8192);
  spec.sink = Original(8192);
  EXPECT_EQ(huge->prefill_signature(), Plan(spec)->prefill_signature());
}

// positions=CACHE (the proto's default) plans like ORIGINAL but for the
// positions: it runs past the context, and its prefill differs once the
// window is full, so it shares no prefix pages with ORIGINAL.
TEST(PolicyPlannerTest, StreamingCachePositionsRunPastTheContext) {
  PolicySpec cache;
  StreamingSpec s;
  s.window_tokens = 64;
  cache.sink = s;
  const auto plan = Plan(cache);
  ASSERT_NE(plan, nullptr);
  EXPECT_TRUE(plan->cache_positions());
  EXPECT_EQ(plan->visible_set().sink_tokens, 4);
  EXPECT_EQ(plan->visible_set().window_tokens, 64);
  EXPECT_EQ(SequenceTokenLimit(plan.get(), 8192), kMaxStreamingSequenceTokens);

  PolicySpec original;
  original.sink = Original(64);
  const auto original_plan = Plan(original);
  EXPECT_FALSE(original_plan->cache_positions());
  EXPECT_EQ(SequenceTokenLimit(original_plan.get(), 8192), 8192);
  EXPECT_EQ(SequenceTokenLimit(nullptr, 8192), 8192);
  EXPECT_NE(plan->prefill_signature(), original_plan->prefill_signature());
  EXPECT_NE(plan->prefill_signature(), 0u);

  // The query's RoPE position is its slot among the keys it sees.
  const SequenceAttentionParams& p = plan->layer(3);
  EXPECT_EQ(CacheSlot(p, 0), 0);
  EXPECT_EQ(CacheSlot(p, 67), 67);
  EXPECT_EQ(CacheSlot(p, 68), 67);
  EXPECT_EQ(CacheSlot(p, 1000000), 67);
  EXPECT_EQ(CacheSlot(SequenceAttentionParams{}, 1000000), 1000000);
}

TEST(PolicyPlannerTest, HeadParamsOfEachPolicy) {
  PolicySpec spec;
  spec.virtual_sink = VirtualSinkSpec{0.5f, {}};
  spec.zero_tuning = ZeroTuningSpec{2.0f, {3, 5}, {0}};
  spec.temperature = TemperatureSpec{std::vector<float>(270, 1.0f)};
  spec.temperature->factors[5 * 9 + 2] = 2.0f;
  spec.emphasis = EmphasisSpec{{{2, 4, SpanUnit::kTokens}}, std::nullopt, {1}, {}};
  const auto plan = Plan(spec);
  for (int32_t l = 0; l < 30; ++l) {
    for (int32_t h = 0; h < 9; ++h) {
      const AttentionHeadParams& p = plan->head(l, h);
      EXPECT_EQ(p.virtual_sink_logit, 0.5f);
      EXPECT_FLOAT_EQ(p.first_token_bias, (l == 3 || l == 5) && h == 0 ? std::log(2.0f) : 0.0f) << l << " " << h;
      EXPECT_FLOAT_EQ(p.logit_scale, l == 5 && h == 2 ? kDenseScale / 2.0f : kDenseScale);
      EXPECT_FLOAT_EQ(p.outside_span_bias, l == 1 ? std::log(0.01f) : 0.0f);
    }
  }
  EXPECT_EQ(plan->layer(1).num_spans, 1);
  EXPECT_EQ(plan->layer(1).spans[0].begin, 2);
  EXPECT_EQ(plan->layer(1).spans[0].end, 4);
  EXPECT_EQ(plan->layer(1).prompt_tokens, 32);
  EXPECT_EQ(plan->labels().sink, "virtual_sink");
  EXPECT_EQ(plan->labels().calibration, "zero_tuning+temperature+emphasis");

  PolicySpec per_head;
  per_head.virtual_sink = VirtualSinkSpec{7.0f, std::vector<float>(270)};
  for (int i = 0; i < 270; ++i) per_head.virtual_sink->per_head_logits[i] = static_cast<float>(i) / 10;
  const auto p2 = Plan(per_head);
  EXPECT_EQ(p2->head(4, 6).virtual_sink_logit, static_cast<float>(4 * 9 + 6) / 10);
}

TEST(PolicyPlannerTest, CharSpansCoverTheTokensTheyOverlapSortedAndMerged) {
  PolicySpec spec;
  // "cat" is bytes [4, 7) of token 2; [12, 15) overlaps tokens 4 and 5;
  // [3, 5) overlaps token 2 only (token 1 ends at 3), and merges with [4, 7).
  spec.emphasis = EmphasisSpec{{{12, 15, SpanUnit::kChars}, {4, 7, SpanUnit::kChars}, {3, 5, SpanUnit::kChars}},
                               0.1f, {}, {}};
  const auto plan = Plan(spec, Text());
  ASSERT_EQ(plan->spans().size(), 2u);
  EXPECT_EQ(plan->spans()[0].begin, 2);
  EXPECT_EQ(plan->spans()[0].end, 3);
  EXPECT_EQ(plan->spans()[1].begin, 4);
  EXPECT_EQ(plan->spans()[1].end, 6);
  EXPECT_FLOAT_EQ(plan->head(0, 0).outside_span_bias, std::log(0.1f));
  EXPECT_EQ(plan->layer(0).prompt_tokens, 7);

  // Adjacent and overlapping token spans merge too.
  spec.emphasis = EmphasisSpec{{{5, 7, SpanUnit::kTokens}, {0, 2, SpanUnit::kTokens}, {2, 3, SpanUnit::kTokens}},
                               std::nullopt, {}, {}};
  const auto merged = Plan(spec, Text());
  ASSERT_EQ(merged->spans().size(), 2u);
  EXPECT_EQ(merged->spans()[0].begin, 0);
  EXPECT_EQ(merged->spans()[0].end, 3);
  EXPECT_EQ(merged->spans()[1].begin, 5);
  EXPECT_EQ(merged->spans()[1].end, 7);
}

TEST(PolicyPlannerTest, SignaturesAreEqualExactlyWhenPrefillIsTheSame) {
  auto signature = [](const PolicySpec& spec, const PromptInfo& prompt = Tokens(32)) {
    return Plan(spec, prompt)->prefill_signature();
  };
  PolicySpec streaming;
  streaming.sink = Original(64);
  PolicySpec same_written_out;
  StreamingSpec s = Original(64);
  s.sink_tokens = 4;
  same_written_out.sink = s;
  EXPECT_EQ(signature(streaming), signature(same_written_out));
  PolicySpec other_window;
  other_window.sink = Original(65);
  EXPECT_NE(signature(streaming), signature(other_window));

  // Policies that compute what dense computes keep signature 0.
  PolicySpec neutral;
  neutral.zero_tuning = ZeroTuningSpec{1.0f, {}, {}};
  neutral.temperature = TemperatureSpec{std::vector<float>(270, 1.0f)};
  neutral.emphasis = EmphasisSpec{{{0, 3, SpanUnit::kTokens}}, 1.0f, {}, {}};
  EXPECT_EQ(signature(neutral), 0u);

  PolicySpec zero_tuning;
  zero_tuning.zero_tuning = ZeroTuningSpec{2.0f, {}, {}};
  PolicySpec zero_tuning_layer0;
  zero_tuning_layer0.zero_tuning = ZeroTuningSpec{2.0f, {0}, {}};
  PolicySpec sink;
  sink.virtual_sink = VirtualSinkSpec{};
  EXPECT_NE(signature(zero_tuning), 0u);
  EXPECT_NE(signature(zero_tuning), signature(zero_tuning_layer0));
  EXPECT_NE(signature(zero_tuning), signature(sink));

  // Emphasis depends on its spans and on the prompt's length.
  PolicySpec emphasis;
  emphasis.emphasis = EmphasisSpec{{{0, 3, SpanUnit::kTokens}}, std::nullopt, {}, {}};
  PolicySpec other_span = emphasis;
  other_span.emphasis->spans[0].end = 4;
  EXPECT_EQ(signature(emphasis), signature(emphasis));
  EXPECT_NE(signature(emphasis), signature(other_span));
  EXPECT_NE(signature(emphasis, Tokens(32)), signature(emphasis, Tokens(33)));
  // But the prompt's length alone changes nothing without emphasis.
  EXPECT_EQ(signature(zero_tuning, Tokens(32)), signature(zero_tuning, Tokens(33)));
}

// Every invalid value and combination, with the message it must start with.
TEST(PolicyPlannerTest, EveryInvalidPolicyNamesItsField) {
  using Edit = std::function<void(PolicySpec&)>;
  const auto streaming = [](StreamingPositions positions) {
    StreamingSpec s;
    s.window_tokens = 64;
    s.positions = positions;
    return s;
  };
  const std::vector<std::pair<std::string, Edit>> cases = {
      {"attention.streaming.window_tokens: must be >= 1 (got 0)", [](auto& p) { p.sink = StreamingSpec{}; }},
      {"attention.virtual_sink.logit: must be finite (got inf)",
       [](auto& p) { p.virtual_sink = VirtualSinkSpec{INFINITY, {}}; }},
      {"attention.virtual_sink.per_head_logits: expected 270 values (n_layers * n_heads), got 9",
       [](auto& p) { p.virtual_sink = VirtualSinkSpec{0.0f, std::vector<float>(9)}; }},
      {"attention.virtual_sink.per_head_logits[3]: must be finite (got nan)", [](auto& p) {
         p.virtual_sink = VirtualSinkSpec{0.0f, std::vector<float>(270)};
         p.virtual_sink->per_head_logits[3] = NAN;
       }},
      {"attention.act.beta: must be in (0, 1] (got 1.5)", [](auto& p) { p.act = ActSpec{1.5f, {}, {}, {}}; }},
      {"attention.act.tau: must be in (0, 1) (got 1)", [](auto& p) { p.act = ActSpec{{}, 1.0f, {}, {}}; }},
      {"attention.act.layers[0]: layer 31 is out of range [0, 30)",
       [](auto& p) { p.act = ActSpec{{}, {}, {31}, {}}; }},
      {"attention.act.heads[1]: head 9 is out of range [0, 9)",
       [](auto& p) { p.act = ActSpec{{}, {}, {}, {0, 9}}; }},
      {"attention.zero_tuning.gamma: must be > 0 (got -1)",
       [](auto& p) { p.zero_tuning = ZeroTuningSpec{-1.0f, {}, {}}; }},
      {"attention.zero_tuning.gamma: must be > 0 (got 0)", [](auto& p) { p.zero_tuning = ZeroTuningSpec{}; }},
      {"attention.zero_tuning.layers[2]: layer 30 is out of range [0, 30)",
       [](auto& p) { p.zero_tuning = ZeroTuningSpec{2.0f, {0, 1, 30}, {}}; }},
      {"attention.zero_tuning.heads[0]: head 100 is out of range [0, 9)",
       [](auto& p) { p.zero_tuning = ZeroTuningSpec{2.0f, {}, {100}}; }},
      {"attention.temperature.factors: expected 270 values (n_layers * n_heads), got 3",
       [](auto& p) { p.temperature = TemperatureSpec{{1, 1, 1}}; }},
      {"attention.temperature.factors: expected 270 values (n_layers * n_heads), got 0",
       [](auto& p) { p.temperature = TemperatureSpec{}; }},
      {"attention.temperature.factors[269]: must be > 0 (got -2)", [](auto& p) {
         p.temperature = TemperatureSpec{std::vector<float>(270, 1.0f)};
         p.temperature->factors[269] = -2.0f;
       }},
      {"attention.emphasis.spans: needs at least one span", [](auto& p) { p.emphasis = EmphasisSpec{}; }},
      {"attention.emphasis.spans: at most 256 spans (got 257)", [](auto& p) {
         p.emphasis = EmphasisSpec{std::vector<SpanSpec>(257, {0, 1, SpanUnit::kTokens}), {}, {}, {}};
       }},
      {"attention.emphasis.spans[1]: [40, 20) is empty", [](auto& p) {
         p.emphasis = EmphasisSpec{{{0, 1, SpanUnit::kTokens}, {40, 20, SpanUnit::kTokens}}, {}, {}, {}};
       }},
      {"attention.emphasis.spans[0]: [3, 3) is empty",
       [](auto& p) { p.emphasis = EmphasisSpec{{{3, 3, SpanUnit::kChars}}, {}, {}, {}}; }},
      {"attention.emphasis.spans[0]: [30, 33) is outside the prompt's 32 tokens",
       [](auto& p) { p.emphasis = EmphasisSpec{{{30, 33, SpanUnit::kTokens}}, {}, {}, {}}; }},
      {"attention.emphasis.spans[0].unit: CHARS needs a text prompt",
       [](auto& p) { p.emphasis = EmphasisSpec{{{0, 3, SpanUnit::kChars}}, {}, {}, {}}; }},
      {"attention.emphasis.alpha: must be in (0, 1] (got 0)",
       [](auto& p) { p.emphasis = EmphasisSpec{{{0, 3, SpanUnit::kTokens}}, 0.0f, {}, {}}; }},
      {"attention.emphasis.alpha: must be in (0, 1] (got 2)",
       [](auto& p) { p.emphasis = EmphasisSpec{{{0, 3, SpanUnit::kTokens}}, 2.0f, {}, {}}; }},
      {"attention.emphasis.layers[0]: layer 30 is out of range [0, 30)",
       [](auto& p) { p.emphasis = EmphasisSpec{{{0, 3, SpanUnit::kTokens}}, {}, {30}, {}}; }},
      {"attention.duo.retrieval_heads[0].layer: layer 30 is out of range [0, 30)",
       [](auto& p) { p.mode = DuoSpec{{{30, 0}}, {}, {}}; }},
      {"attention.duo.retrieval_heads[1].head: head 9 is out of range [0, 9)",
       [](auto& p) { p.mode = DuoSpec{{{0, 0}, {1, 9}}, {}, {}}; }},
      {"attention.duo.retrieval_heads: is empty and no profile names the retrieval heads",
       [](auto& p) { p.mode = DuoSpec{}; }},
      {"attention.duo.recent_tokens: must be >= 1 (got 0)", [](auto& p) { p.mode = DuoSpec{{{0, 0}}, {}, 0u}; }},
      {"attention.sparse.token_budget: must be >= 1 (got 0)", [](auto& p) { p.mode = SparseSpec{}; }},
      {"attention.sparse.dense_layers: must be <= n_layers 30 (got 31)",
       [](auto& p) { p.mode = SparseSpec{1024, 31u}; }},
      {"attention.linear.window_tokens: must be >= 1 (got 0)", [](auto& p) { p.mode = LinearSpec{}; }},
      // Combinations.
      {"attention.act: cannot be combined with attention.linear", [](auto& p) {
         p.act = ActSpec{};
         p.mode = LinearSpec{64, 4};
       }},
      {"attention.sparse: cannot be combined with attention.streaming positions CACHE", [&](auto& p) {
         p.sink = streaming(StreamingPositions::kCache);
         p.mode = SparseSpec{1024, {}};
       }},
      {"attention.linear: cannot be combined with attention.streaming", [&](auto& p) {
         p.sink = streaming(StreamingPositions::kOriginal);
         p.mode = LinearSpec{64, 4};
       }},
      {"attention.duo: cannot be combined with attention.streaming", [&](auto& p) {
         p.sink = streaming(StreamingPositions::kOriginal);
         p.mode = DuoSpec{{{0, 0}}, {}, {}};
       }},
      // A bad value is reported before an unimplemented feature.
      {"attention.act.beta: must be in (0, 1] (got 0)", [](auto& p) {
         p.act = ActSpec{0.0f, {}, {}, {}};
         p.profile = "retrieval";
       }},
  };
  for (const auto& [message, edit] : cases) {
    PolicySpec spec;
    edit(spec);
    const absl::Status s = PlanAttention(spec, Smol(), Tokens(32)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << message << " | " << s;
    EXPECT_EQ(std::string(s.message()).rfind(message, 0), 0u) << message << " | " << s.message();
  }
}

TEST(PolicyPlannerTest, CharSpansOutsideTheTextOrMissingTokensAreRejected) {
  PolicySpec spec;
  spec.emphasis = EmphasisSpec{{{20, 23, SpanUnit::kChars}}, {}, {}, {}};
  absl::Status s = PlanAttention(spec, Smol(), Text()).status();
  EXPECT_EQ(s.message(), "attention.emphasis.spans[0]: [20, 23) is outside the prompt's 22 bytes");
  // Bytes no token covers (here, a hole in made-up offsets).
  PromptInfo holes = Text();
  holes.token_offsets[3] = {7, 7};
  spec.emphasis = EmphasisSpec{{{8, 10, SpanUnit::kChars}}, {}, {}, {}};
  s = PlanAttention(spec, Smol(), holes).status();
  EXPECT_EQ(s.message(), "attention.emphasis.spans[0]: [8, 10) covers no token of the prompt");
}

// ACT's defaults: beta 0.4 on every head of layers 2 .. n_layers - 2, tau 0.1;
// given lists replace them.
TEST(PolicyPlannerTest, ActHeadsAndDefaults) {
  PolicySpec spec;
  spec.act = ActSpec{};
  auto plan = PlanAttention(spec, Smol(), Tokens(12));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE((*plan)->act());
  EXPECT_FLOAT_EQ((*plan)->act_tau(), 0.1f);
  EXPECT_EQ((*plan)->prompt_tokens(), 12);
  for (int l = 0; l < 30; ++l) {
    for (int h = 0; h < 9; ++h) {
      EXPECT_EQ((*plan)->head(l, h).reweight_beta, l >= 2 && l <= 28 ? 0.4f : 1.0f) << l << " " << h;
    }
  }
  spec.act = ActSpec{0.25f, 0.2f, {0, 29}, {3}};
  plan = PlanAttention(spec, Smol(), Tokens(12));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FLOAT_EQ((*plan)->act_tau(), 0.2f);
  for (int l = 0; l < 30; ++l) {
    for (int h = 0; h < 9; ++h) {
      EXPECT_EQ((*plan)->head(l, h).reweight_beta, (l == 0 || l == 29) && h == 3 ? 0.25f : 1.0f) << l << " " << h;
    }
  }
  // beta 1 calibrates nothing.
  spec.act = ActSpec{1.0f, {}, {}, {}};
  plan = PlanAttention(spec, Smol(), Tokens(12));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE((*plan)->act());
}

// DuoAttention: every head but the retrieval ones sees sinks + recent
// tokens (64 + 256 by default); KV groups of streaming heads only read those.
TEST(PolicyPlannerTest, DuoStreamingHeads) {
  PolicySpec spec;
  spec.mode = DuoSpec{{{3, 4}, {7, 0}}, {}, {}};
  auto plan = PlanAttention(spec, Smol(), Tokens(32));
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (int l = 0; l < 30; ++l) {
    for (int h = 0; h < 9; ++h) {
      const bool retrieval = (l == 3 && h == 4) || (l == 7 && h == 0);
      EXPECT_EQ((*plan)->head(l, h).sink_tokens, retrieval ? 0 : 64);
      EXPECT_EQ((*plan)->head(l, h).window_tokens, retrieval ? 0 : 256);
    }
  }
  EXPECT_NE((*plan)->prefill_signature(), 0u);
  // 90 KV groups, two of them with a retrieval head: at query 4095 the
  // others read 64 sinks (4 pages) and 256 recent keys (16 pages, 17 when
  // the window starts mid-page).
  EXPECT_EQ((*plan)->PagesRead(4095, 4095, 16), 2 * 256 + 88 * (4 + 16));
  spec.mode = DuoSpec{{{3, 4}}, 2u, 30u};
  plan = PlanAttention(spec, Smol(), Tokens(32));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->head(0, 0).sink_tokens, 2);
  EXPECT_EQ((*plan)->head(0, 0).window_tokens, 30);
}

TEST(PolicyPlannerTest, ValidButUnbuiltCombinationsAreUnimplemented) {
  using Edit = std::function<void(PolicySpec&)>;
  const std::vector<std::pair<std::string, Edit>> cases = {
      {"attention.linear: not implemented with attention.emphasis", [](auto& p) {
         p.mode = LinearSpec{64, 4};
         p.emphasis = EmphasisSpec{{{0, 4, SpanUnit::kTokens}}, {}, {}, {}};
       }},
      // Token 0 would be folded with its bias.
      {"attention.linear: not implemented with attention.zero_tuning unless sink_tokens >= 1", [](auto& p) {
         p.mode = LinearSpec{64, 0};
         p.zero_tuning = ZeroTuningSpec{2.0f, {}, {}};
         p.profile = "retrieval";
       }},
  };
  const HeadProfiles profiles = SmolProfiles({"retrieval"});
  for (const auto& [message, edit] : cases) {
    PolicySpec spec;
    edit(spec);
    const absl::Status s = PlanAttention(spec, Smol(), Tokens(32), &profiles).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << message << " | " << s;
    EXPECT_EQ(s.message(), message);
  }
}

TEST(PolicyPlannerTest, ProfileFillsTheRetrievalHeadsADuoLeavesEmpty) {
  const HeadProfiles profiles = SmolProfiles({"smol"});
  const std::vector<HeadRefSpec>& named = profiles.at("smol").retrieval_heads;
  PolicySpec spec;
  spec.profile = "smol";
  spec.mode = DuoSpec{};
  spec.act = ActSpec{};
  absl::StatusOr<PolicySpec> resolved = ResolveProfile(spec, &profiles);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  const auto& heads = std::get<DuoSpec>(resolved->mode).retrieval_heads;
  ASSERT_EQ(heads.size(), named.size());
  for (size_t i = 0; i < heads.size(); ++i) {
    EXPECT_EQ(heads[i].layer, named[i].layer);
    EXPECT_EQ(heads[i].head, named[i].head);
  }
  // ACT keeps its default heads: profiles do not class ACT heads.
  EXPECT_TRUE(resolved->act->layers.empty());
  EXPECT_TRUE(resolved->act->heads.empty());
  // Heads the request lists win over the profile's.
  spec.mode = DuoSpec{{{4, 5}}, {}, {}};
  resolved = ResolveProfile(spec, &profiles);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  ASSERT_EQ(std::get<DuoSpec>(resolved->mode).retrieval_heads.size(), 1u);
  EXPECT_EQ(std::get<DuoSpec>(resolved->mode).retrieval_heads[0].layer, 4u);
  // A dense policy naming a profile plans as dense.
  PolicySpec dense;
  dense.profile = "smol";
  absl::StatusOr<std::shared_ptr<const AttentionPlan>> plan = PlanAttention(dense, Smol(), Tokens(32), &profiles);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->prefill_signature(), 0u);
}

TEST(PolicyPlannerTest, UnknownProfileIsRejectedListingTheLoadedOnes) {
  PolicySpec spec;
  spec.profile = "x";
  const HeadProfiles profiles = SmolProfiles({"b", "a"});
  absl::Status s = PlanAttention(spec, Smol(), Tokens(32), &profiles).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "attention.profile: unknown profile \"x\" (loaded: a, b)");
  spec.mode = DuoSpec{};
  s = PlanAttention(spec, Smol(), Tokens(32)).status();
  EXPECT_EQ(s.message(), "attention.profile: unknown profile \"x\" (loaded: none)");
  // Values of earlier fields are reported first (proto order).
  spec.zero_tuning = ZeroTuningSpec{-1.0f, {}, {}};
  s = PlanAttention(spec, Smol(), Tokens(32), &profiles).status();
  EXPECT_EQ(s.message(), "attention.zero_tuning.gamma: must be > 0 (got -1)");
}

TEST(VisibleSetTest, EvictablePagesAreWhollyHiddenFromEveryLaterQuery) {
  const VisibleSet full;
  EXPECT_TRUE(full.EvictablePages(10000, 16).empty());
  const VisibleSet rule{4, 64};
  // Query 100 sees [0, 4) and (36, 100]: hidden [4, 36], so page 1 ([16, 32))
  // only; page 0 holds the sinks and page 2 ([32, 48)) key 37.
  EXPECT_EQ(rule.EvictablePages(100, 16).begin, 1);
  EXPECT_EQ(rule.EvictablePages(100, 16).end, 2);
  EXPECT_TRUE(rule.EvictablePages(70, 16).empty());
  // Hidden [4, 47]: pages 1 and 2.
  EXPECT_EQ(rule.EvictablePages(111, 16).end, 3);
  // Without sinks page 0 goes too once key 15 is hidden.
  EXPECT_EQ((VisibleSet{0, 64}).EvictablePages(79, 16).begin, 0);
  EXPECT_EQ((VisibleSet{0, 64}).EvictablePages(79, 16).end, 1);
  EXPECT_TRUE((VisibleSet{0, 64}).EvictablePages(78, 16).empty());
}

TEST(VisibleSetTest, PagesReadMatchesABruteForceCount) {
  for (const VisibleSet rule : {VisibleSet{}, VisibleSet{4, 64}, VisibleSet{0, 16}, VisibleSet{20, 8},
                                VisibleSet{16, 16}}) {
    for (int32_t first = 0; first < 300; first += 7) {
      for (int32_t last : {first, first + 1, first + 40, first + 200}) {
        std::vector<bool> page_read(last / 16 + 1, false);
        for (int32_t q = first; q <= last; ++q) {
          for (int32_t k = 0; k <= q; ++k) {
            // Keys the kernel reads: everything but the band the window
            // hides from the first query.
            const bool hidden_from_first = !rule.keeps_everything() && k >= rule.sink_tokens &&
                                           k <= first - rule.window_tokens;
            if (!hidden_from_first) page_read[k / 16] = true;
          }
        }
        const int32_t want = static_cast<int32_t>(std::count(page_read.begin(), page_read.end(), true));
        EXPECT_EQ(rule.PagesRead(first, last, 16), want)
            << rule.sink_tokens << "/" << rule.window_tokens << " queries " << first << ".." << last;
      }
    }
  }
}

// A sequence that reserves pages for each chunk and gives back the
// evictable ones after it never holds more than PeakPages.
TEST(VisibleSetTest, PeakPagesBoundsAChunkedRun) {
  for (const VisibleSet rule : {VisibleSet{}, VisibleSet{4, 64}, VisibleSet{0, 16}, VisibleSet{20, 8},
                                VisibleSet{16, 16}, VisibleSet{4, 1}}) {
    for (int32_t chunk : {1, 7, 16, 128}) {
      for (int32_t n : {1, 50, 300, 1000}) {
        std::vector<bool> released;
        int64_t peak = 0;
        for (int32_t p = 0; p < n; p += chunk) {
          const int32_t end = std::min(n, p + chunk);
          released.resize((end + 15) / 16, false);
          peak = std::max<int64_t>(peak, std::count(released.begin(), released.end(), false));
          const PageRange hidden = rule.EvictablePages(end, 16);
          for (int32_t q = hidden.begin; q < std::min<int32_t>(hidden.end, released.size()); ++q) released[q] = true;
        }
        EXPECT_LE(peak, rule.PeakPages(n, chunk, 16)) << rule.sink_tokens << "/" << rule.window_tokens << " chunk "
                                                      << chunk << " tokens " << n;
        if (rule.keeps_everything()) {
          EXPECT_EQ(rule.PeakPages(n, chunk, 16), (n + 15) / 16);
        }
      }
    }
  }
}

}  // namespace
}  // namespace attnserve
