// Prefill attention on the GPU over the paged fp16 KV cache: the queries of
// a prefill chunk in tiles of 64 rows (query, query head of a KV group), so
// that a block loads each key and value once for every query of its tile
// and every query head of its KV group (the decode kernel reads them once
// per query). Q·Kᵀ and P·V run on the tensor cores (mma.sync; q and the
// weights rounded to fp16, the weights unnormalised, against the running
// maximum; fp32 sums), the
// scores and value sums held in registers; the per-query math between them
// is the decode kernel's: every hook of attention_hooks.h from each query's
// entry, ACT's sums over its key set and over the rest (a second pass over
// the keys where a head of the group reweights), the virtual sink, sink keys
// scored with the cache-slot queries; no Quest ranges (Quest's queries go
// to the decode kernel). No split of the keys: a chunk has tiles enough to
// fill the device. Asynchronous; nothing allocates.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/paged_decode.h"

namespace attnserve {

// Entries [first_entry, first_entry + n_queries) are consecutive queries of
// one sequence (the same kv and params), in ascending query_pos.
struct PrefillTile {
  int32_t first_entry = 0;
  int32_t n_queries = 0;  // 1 .. PrefillQueriesPerTile(group)
};

struct PrefillAttentionArgs {
  const DecodeSequence* entries = nullptr;  // device: a query each; key_ranges null
  const PrefillTile* tiles = nullptr;       // device, [n_tiles]
  int32_t n_tiles = 0;
  int32_t layer = 0;              // the entries are read AtLayer(layer)
  const float* q = nullptr;       // as DecodeAttentionArgs (rows by QueryRow)
  const float* sink_q = nullptr;
  float* out = nullptr;
  float* lse = nullptr;           // null: not written
  int32_t n_q_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;           // 64 or 128
};

// A tile's rows: its queries times the query heads of a KV group.
inline constexpr int32_t kPrefillTileRows = 64;

// (group <= kMaxQueryHeadsPerKvHead, so at least 4.)
ATTN_HD int32_t PrefillQueriesPerTile(int32_t group) { return kPrefillTileRows / group; }

absl::Status PrefillAttentionCuda(const PrefillAttentionArgs& args, void* stream);

}  // namespace attnserve
