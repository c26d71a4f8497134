// PlanStore: each policy's per-layer parameters copied to the device once
// and found there by later steps; new plans appended after them; a full
// buffer starting over with the step's own plans; an upload that did not
// happen, or a moved buffer, staging everything again; ACT key sets being
// found staged with the step's data.
#include "engine/backend/cuda/plan_store.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <vector>

#include "engine/policy/act_key_sets.h"
#include "tests/unit/step_metadata_fixture.h"

namespace attnserve {
namespace {

class PlanStoreTest : public StepMetadataFixture {
 protected:
  PlanStoreTest() : table_(Table({0}, 4)) {
    PolicySpec streaming;
    streaming.sink = StreamingSpec{4, 8, StreamingPositions::kOriginal};
    PolicySpec temperature;
    temperature.temperature = TemperatureSpec{std::vector<float>(c_.n_layers * c_.n_heads, 0.5f)};
    streaming_ = Plan(streaming, c_, 4);
    temperature_ = Plan(temperature, c_, 4);
  }

  SequenceStep Step(const AttentionPlan* plan, ActKeySets* sets = nullptr) {
    SequenceStep st{&table_, token_, 4, LogitsWanted::kLast, plan};
    st.act_sets = sets;
    return st;
  }

  // One step's staging on a store of `capacity` bytes at plans_, uploaded
  // (copied to plans_) unless told otherwise.
  std::vector<const PlanStore::Staged*> Stage(const std::vector<SequenceStep>& steps, size_t capacity = 1 << 20,
                                              bool upload = true) {
    store_.BeginStep(plans_.data(), capacity);
    data_arena_.Reset(data_.data());
    std::vector<const PlanStore::Staged*> staged = store_.Stage(c_, steps, data_arena_);
    if (upload) {
      std::memcpy(plans_.data() + store_.upload_begin(), store_.data() + store_.upload_begin(),
                  store_.size() - store_.upload_begin());
      store_.Uploaded();
    }
    return staged;
  }

  size_t Appended() const { return store_.size() - store_.upload_begin(); }

  PageTable table_;
  const std::array<int32_t, 1> token_ = {3};
  std::shared_ptr<const AttentionPlan> streaming_, temperature_;
  PlanStore store_;
  StagingArena data_arena_;
};

TEST_F(PlanStoreTest, PlansAreCopiedOnceAndFoundByLaterSteps) {
  const std::vector<const PlanStore::Staged*> first = Stage({Step(nullptr), Step(streaming_.get())});
  EXPECT_EQ(first[0], nullptr);  // dense
  ASSERT_NE(first[1], nullptr);
  EXPECT_EQ(store_.upload_begin(), 0u);
  EXPECT_GT(Appended(), 0u);
  // On the device: every layer's parameters, pointing at their heads there.
  const SequenceAttentionParams* on_device = first[1]->device;
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(on_device) - plans_.data() + sizeof(SequenceAttentionParams) * 2,
            store_.size());
  for (int32_t l = 0; l < c_.n_layers; ++l) {
    EXPECT_EQ(on_device[l].window_tokens, 8);
    EXPECT_EQ(on_device[l].heads[3].logit_scale, streaming_->layer(l).heads[3].logit_scale);
  }
  const size_t after_first = store_.size();

  // The same plan again: nothing to copy. A new one: appended after it.
  const std::vector<const PlanStore::Staged*> second = Stage({Step(streaming_.get())});
  EXPECT_EQ(Appended(), 0u);
  EXPECT_EQ(second[0]->device, on_device);
  const std::vector<const PlanStore::Staged*> third = Stage({Step(temperature_.get()), Step(streaming_.get())});
  EXPECT_EQ(store_.upload_begin(), after_first);
  EXPECT_GT(Appended(), 0u);
  EXPECT_EQ(third[1]->device, on_device);
  EXPECT_EQ(third[0]->device[1].heads[0].logit_scale, temperature_->layer(1).heads[0].logit_scale);
}

TEST_F(PlanStoreTest, ANewBufferOrAMissedUploadStagesEverythingAgain) {
  Stage({Step(streaming_.get())}, 1 << 20, false);
  Stage({Step(streaming_.get())});
  EXPECT_EQ(store_.upload_begin(), 0u);  // the first step's bytes never reached the device
  EXPECT_GT(Appended(), 0u);
  store_.BeginStep(plans_.data() + 64, 1 << 19);  // the buffer moved
  data_arena_.Reset(data_.data());
  const std::vector<const PlanStore::Staged*> moved = store_.Stage(c_, std::vector<SequenceStep>{Step(streaming_.get())},
                                                                   data_arena_);
  EXPECT_EQ(store_.upload_begin(), 0u);
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(moved[0]->layers[0].heads), plans_.data() + 64);
  // A buffer freed and allocated again at the same address: dropped too.
  Stage({Step(streaming_.get())});
  Stage({Step(streaming_.get())});
  EXPECT_EQ(Appended(), 0u);
  store_.Invalidate();
  Stage({Step(streaming_.get())});
  EXPECT_EQ(store_.upload_begin(), 0u);
  EXPECT_GT(Appended(), 0u);
}

TEST_F(PlanStoreTest, AFullBufferStartsOverWithTheStepsOwnPlans) {
  const std::vector<const PlanStore::Staged*> one = Stage({Step(streaming_.get())});
  const size_t plan_bytes = store_.size();
  // Room for one plan only: the next step's new plan does not fit after it,
  // so the store starts over with that step's plan alone.
  const std::vector<const PlanStore::Staged*> other = Stage({Step(temperature_.get())}, plan_bytes + 64);
  EXPECT_EQ(store_.upload_begin(), 0u);
  EXPECT_LE(store_.size(), plan_bytes + 64);
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(other[0]->device) + sizeof(SequenceAttentionParams) * 2,
            plans_.data() + store_.size());
  // The dropped plan comes back: staged again.
  Stage({Step(streaming_.get())}, plan_bytes + 64);
  EXPECT_EQ(store_.upload_begin(), 0u);
  // Two plans in one step of that room: the caller must grow the buffer.
  Stage({Step(streaming_.get()), Step(temperature_.get())}, plan_bytes + 64);
  EXPECT_GT(store_.size(), plan_bytes + 64);
}

TEST_F(PlanStoreTest, KeySetsBeingFoundGoWithTheStepsData) {
  PolicySpec act;
  act.act = ActSpec{0.4f, 0.1f, {1}, {0, 2}};
  const std::shared_ptr<const AttentionPlan> plan = Plan(act, c_, 3);
  ActKeySets sets(*plan);
  ASSERT_FALSE(sets.complete());
  const std::vector<const PlanStore::Staged*> finding = Stage({Step(plan.get(), &sets), Step(plan.get(), &sets)});
  EXPECT_EQ(Appended(), 0u);
  EXPECT_EQ(finding[0], finding[1]);  // staged once for the request
  const auto* at = reinterpret_cast<const uint8_t*>(finding[0]->device);
  EXPECT_GE(at, data_.data());
  EXPECT_LT(at, data_.data() + data_arena_.size());
  // Once found, the sets are the request's for good: kept on the device.
  const std::vector<double> mass(static_cast<size_t>(c_.n_heads) * 3, 1.0);
  for (int32_t l = 0; l < c_.n_layers; ++l) {
    if (sets.needs(l)) sets.SetFromColumnMass(l, mass);
  }
  ASSERT_TRUE(sets.complete());
  const std::vector<const PlanStore::Staged*> found = Stage({Step(plan.get(), &sets)});
  EXPECT_GT(Appended(), 0u);
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(found[0]->device) + sizeof(SequenceAttentionParams) * 2,
            plans_.data() + store_.size());
  Stage({Step(plan.get(), &sets)});
  EXPECT_EQ(Appended(), 0u);
}

}  // namespace
}  // namespace attnserve
