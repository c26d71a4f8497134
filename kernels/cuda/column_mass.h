// ACT's prompt statistic on the GPU, what AttentionColumnMassKvHead sums on
// the CPU: mass[h][j] += Σ_i p_ij over a prompt's queries i, for every query
// head h and key j, with p the probabilities decode attention weights values
// with (every hook of the entries' parameters, the virtual sink in the
// denominator). The denominators come from DecodeAttentionCuda's lse of the
// same entries, so one pass over the keys suffices. Sums are in double, by
// atomics: their last bits vary from run to run. Asynchronous.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/paged_decode.h"

namespace attnserve {

struct ColumnMassArgs {
  const DecodeSequence* seqs = nullptr;  // [n_queries]: one prompt query each (no Quest ranges)
  int32_t n_queries = 0;
  int32_t layer = 0;              // the entries are read AtLayer(layer)
  const float* q = nullptr;       // [rows][n_q_heads][head_dim], a row per entry (QueryRow)
  const float* sink_q = nullptr;  // as DecodeAttentionArgs::sink_q
  const float* lse = nullptr;     // [rows][n_q_heads]: DecodeAttentionCuda's, same entries
  int32_t n_q_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;           // <= 128
  double* mass = nullptr;         // [n_q_heads][n_keys], added to
  int32_t n_keys = 0;             // keys j >= n_keys are not summed
};

absl::Status ColumnMassCuda(const ColumnMassArgs& args, void* stream);

}  // namespace attnserve
