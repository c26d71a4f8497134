// Decode steps replayed from CUDA graphs against the same steps launched
// kernel by kernel, on the backend itself so that both runs see the very
// same steps: every policy in one batch (ACT's prompt pass among them),
// greedy and sampled picks with log-probabilities, and a batch that shrinks
// as sequences stop (padded to 16, 8, 4, 2, 1), so that graphs are
// captured, replayed and replaced.
// The picks must be equal bit for bit. Skips without a GPU.
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_backend.h"
#include "engine/model/model.h"
#include "engine/policy/act_key_sets.h"
#include "engine/policy/planner.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/policy_cases.h"
#include "tests/unit/synthetic_model.h"

namespace attnserve {
namespace {

constexpr int32_t kPageSize = 16, kDecodeSteps = 27;

struct Pick {
  int32_t token = 0;
  float logprob = 0.0f;
  bool operator==(const Pick&) const = default;
};

struct StepsRun {
  std::vector<std::vector<Pick>> picks;  // [step][sequence]
  Backend::GraphCounts graphs;
};

// Sequence i: policy i, a prompt of 20 + 3i tokens, sampled when i is odd;
// from decode step 3k on, only the first n - k sequences go on.
StepsRun RunSteps(const Model& model, bool cuda_graphs) {
  const ModelConfig& c = model.config;
  CudaBackendOptions options;
  options.cuda_graphs = cuda_graphs;
  std::unique_ptr<CudaBackend> backend = CudaBackend::Create(model, options).value();
  KvCachePool pool = backend->CreateKvPool(kPageSize, 0.3).value();
  const std::vector<PolicyCase> cases = Policies(c);
  const int32_t n = static_cast<int32_t>(cases.size());
  const std::vector<int32_t> text = model.tokenizer->Encode(
      "The lighthouse keeper wrote in his log every evening, and the sea answered with its own.", true, true);
  std::vector<std::vector<int32_t>> tokens(n);
  std::vector<std::shared_ptr<const AttentionPlan>> plans(n);
  std::vector<std::unique_ptr<ActKeySets>> act(n);
  std::vector<std::unique_ptr<LinearAttentionState>> linear(n);
  std::vector<PageTable> tables(n);
  const int32_t pages_per_seq = (20 + 3 * n + kDecodeSteps) / kPageSize + 1;
  for (int32_t i = 0; i < n; ++i) {
    tokens[i].assign(text.begin(), text.begin() + std::min<size_t>(text.size(), 20 + 3 * i));
    PromptInfo prompt;
    prompt.num_tokens = static_cast<int32_t>(tokens[i].size());
    plans[i] = PlanAttention(cases[i].spec, c, prompt).value();
    if (plans[i]->act()) act[i] = std::make_unique<ActKeySets>(*plans[i]);
    if (plans[i]->linear()) linear[i] = std::make_unique<LinearAttentionState>(c.n_layers, c.n_kv_heads, c.head_dim);
    for (int32_t p = 0; p < pages_per_seq; ++p) tables[i].pages.push_back(i * pages_per_seq + p);
  }
  StepsRun run;
  std::vector<int32_t> computed(n, 0);
  std::vector<TokenPick> picks(n);
  std::vector<float> logits;
  for (int32_t t = 0; t <= kDecodeSteps; ++t) {
    const int32_t active = n - t / 3;
    std::vector<SequenceStep> steps(active);
    for (int32_t i = 0; i < active; ++i) {
      SequenceStep& st = steps[i];
      tables[i].num_tokens = computed[i];
      st.pages = &tables[i];
      st.tokens = std::span<const int32_t>(tokens[i]).subspan(computed[i]);
      st.first_pos = computed[i];
      st.logits = LogitsWanted::kLastPick;
      st.attention = plans[i].get();
      st.act_sets = act[i].get();
      st.linear = linear[i].get();
      TokenPick& pick = picks[i];
      pick = TokenPick{};
      pick.logprobs = true;
      pick.top_logprobs = 2;
      if (i % 2 == 1) {
        pick.temperature = 0.8f;
        pick.top_p = 0.9f;
        pick.uniform = std::fmod(0.1234 * (t + 1) * (i + 1), 1.0);
      }
      st.pick = &pick;
    }
    const absl::Status s = backend->Forward(steps, logits);
    EXPECT_TRUE(s.ok()) << s << " (step " << t << ")";
    if (!s.ok()) break;
    run.picks.emplace_back();
    for (int32_t i = 0; i < active; ++i) {
      computed[i] += static_cast<int32_t>(steps[i].tokens.size());
      tokens[i].push_back(picks[i].token);
      run.picks.back().push_back({picks[i].token, picks[i].logprob});
    }
  }
  run.graphs = backend->graph_counts();
  return run;
}

class StepGraphsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ATTNSERVE_SKIP_WITHOUT_GPU();
    model_ = LoadSyntheticLlama("attnserve_step_graphs_test", [](const std::string& p) { return LoadModel(p); }).value();
  }
  std::unique_ptr<Model> model_;
};

TEST_F(StepGraphsTest, ReplaysPickWhatKernelByKernelStepsPick) {
  // One backend at a time: each takes its share of the device's memory.
  const StepsRun eager = RunSteps(*model_, false);
  const StepsRun graphed = RunSteps(*model_, true);
  ASSERT_EQ(graphed.picks.size(), eager.picks.size());
  for (size_t t = 0; t < eager.picks.size(); ++t) EXPECT_EQ(graphed.picks[t], eager.picks[t]) << "step " << t;
  EXPECT_EQ(eager.graphs.replayed + eager.graphs.captured, 0);
  // Each padded batch size runs three or more steps: one launched kernel by
  // kernel, one captured, the others replayed (the prefill step never is).
  std::printf("graph steps: %lld captured, %lld replayed\n", static_cast<long long>(graphed.graphs.captured),
              static_cast<long long>(graphed.graphs.replayed));
  EXPECT_GT(graphed.graphs.captured, 0);
  EXPECT_GT(graphed.graphs.replayed, 0);
}

}  // namespace
}  // namespace attnserve
