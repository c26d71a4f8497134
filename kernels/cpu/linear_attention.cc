#include "kernels/cpu/linear_attention.h"

#include "kernels/common/taylor.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/linear_attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// rows[f][:] += phi[f] * v for every feature f: the state's update, a
// vector of head_dim at a time (the scalar loop is the state's whole cost).
void AddOuterImpl(const float* phi, int features, const float* v, int head_dim, float* rows) {
  const hn::ScalableTag<float> d;
  const int N = static_cast<int>(hn::Lanes(d));
  for (int f = 0; f < features; ++f) {
    float* row = rows + static_cast<size_t>(f) * head_dim;
    const auto p = hn::Set(d, phi[f]);
    int c = 0;
    for (; c + N <= head_dim; c += N) hn::StoreU(hn::MulAdd(p, hn::LoadU(d, v + c), hn::LoadU(d, row + c)), d, row + c);
    for (; c < head_dim; ++c) row[c] += phi[f] * v[c];
  }
}

// out[:] = Σ_f phi[f] * rows[f][:], two accumulators per vector.
void WeightedRowSumImpl(const float* phi, int features, const float* rows, int head_dim, float* out) {
  const hn::ScalableTag<float> d;
  const int N = static_cast<int>(hn::Lanes(d));
  int c = 0;
  for (; c + N <= head_dim; c += N) {
    auto a0 = hn::Zero(d), a1 = hn::Zero(d);
    int f = 0;
    for (; f + 2 <= features; f += 2) {
      a0 = hn::MulAdd(hn::Set(d, phi[f]), hn::LoadU(d, rows + static_cast<size_t>(f) * head_dim + c), a0);
      a1 = hn::MulAdd(hn::Set(d, phi[f + 1]), hn::LoadU(d, rows + static_cast<size_t>(f + 1) * head_dim + c), a1);
    }
    for (; f < features; ++f) {
      a0 = hn::MulAdd(hn::Set(d, phi[f]), hn::LoadU(d, rows + static_cast<size_t>(f) * head_dim + c), a0);
    }
    hn::StoreU(hn::Add(a0, a1), d, out + c);
  }
  for (; c < head_dim; ++c) {
    float s = 0.0f;
    for (int f = 0; f < features; ++f) s += phi[f] * rows[static_cast<size_t>(f) * head_dim + c];
    out[c] = s;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnserve {

HWY_EXPORT(AddOuterImpl);
HWY_EXPORT(WeightedRowSumImpl);

void FoldKey(const float* k, const float* v, int head_dim, LinearHeadState& state) {
  const int features = TaylorFeatureCount(head_dim);
  thread_local std::vector<float> phi;
  phi.resize(features);
  TaylorFeatures(k, head_dim, phi.data());
  HWY_DYNAMIC_DISPATCH(AddOuterImpl)(phi.data(), features, v, head_dim, state.s.data());
  for (int f = 0; f < features; ++f) state.z[f] += phi[f];
}

void ReadLinearState(const LinearHeadState& state, const float* q, int head_dim, float* num, float* den) {
  const int features = TaylorFeatureCount(head_dim);
  thread_local std::vector<float> phi;
  phi.resize(features);
  TaylorFeatures(q, head_dim, phi.data());
  HWY_DYNAMIC_DISPATCH(WeightedRowSumImpl)(phi.data(), features, state.s.data(), head_dim, num);
  double d = 0.0;
  for (int f = 0; f < features; ++f) d += static_cast<double>(phi[f]) * state.z[f];
  *den = static_cast<float>(d);
}

}  // namespace attnserve
#endif  // HWY_ONCE
