// The attention kernels' view of one layer of one sequence's paged KV
// cache, shared by the CPU and CUDA kernels (on the GPU every pointer is a
// device pointer).
#pragma once

#include <cstdint>

#include "kernels/common/ggml_types.h"
#include "kernels/common/half.h"

namespace attnserve {

// One layer of one sequence's cache. Its keys are addressed by slice: the
// keys of block b (positions [b * page_size, (b + 1) * page_size)) of KV
// head g are the [page_size][head_dim] rows at keys + Slice(g, b) *
// page_size * head_dim, and their bounds the head_dim values at key_min +
// Slice(g, b) * head_dim. A page of the table holds one slice per KV head;
// a table packed by head (DuoAttention's bounded streaming heads) names
// every KV head's slice of every block on its own.
struct PagedKv {
  const fp16_t* keys = nullptr;    // slice 0: [page_size][head_dim]
  const fp16_t* values = nullptr;  // same layout
  const int32_t* page_table = nullptr;  // [blocks]: slice of head g = page * n_kv_heads + g
  int32_t page_size = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t num_tokens = 0;  // keys at positions [0, num_tokens) are present
  // Quest's page bounds: elementwise min and max of each slice's keys
  // ([slices][head_dim]); null where nobody reads them.
  const fp16_t* key_min = nullptr;
  const fp16_t* key_max = nullptr;
  // Packed by head: [blocks][head_slices_step], this layer's KV heads at
  // offsets 0 .. n_kv_heads - 1; page_table is unused then.
  const int32_t* head_slices = nullptr;
  int32_t head_slices_step = 0;
  // fp16 values from one layer's keys (or values) to the next layer's; the
  // key bounds are page_size times closer. Set by LayerView, for AtLayer.
  int64_t layer_stride = 0;

  // This view of layer 0 moved to `layer` of the same pool: the GPU step
  // stages each sequence's view once and its kernels take the layer.
  ATTN_HD PagedKv AtLayer(int32_t layer) const {
    PagedKv kv = *this;
    if (head_slices != nullptr) {
      // Packed slices are numbered from layer 0's base, the layers' heads side by side.
      kv.head_slices += static_cast<int64_t>(layer) * n_kv_heads;
      return kv;
    }
    const int64_t step = static_cast<int64_t>(layer) * layer_stride;
    kv.keys += step;
    kv.values += step;
    if (key_min != nullptr) kv.key_min += step / page_size;
    if (key_max != nullptr) kv.key_max += step / page_size;
    return kv;
  }

  ATTN_HD int64_t Slice(int kv_head, int32_t block) const {
    if (head_slices != nullptr) return head_slices[static_cast<int64_t>(block) * head_slices_step + kv_head];
    return static_cast<int64_t>(page_table[block]) * n_kv_heads + kv_head;
  }
  // The row of position t of KV head g among the layer's head_dim-wide rows
  // of keys (or values: the same).
  ATTN_HD int64_t RowIndex(int kv_head, int32_t t) const {
    return Slice(kv_head, t / page_size) * page_size + t % page_size;
  }
  // Keys (or values, with base = values) of position t of KV head g.
  ATTN_HD const fp16_t* Row(const fp16_t* base, int kv_head, int32_t t) const {
    return base + RowIndex(kv_head, t) * head_dim;
  }
};

}  // namespace attnserve
