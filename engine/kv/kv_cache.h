// The paged KV cache: one pool of fixed-size pages shared by all sequences,
// a free-list allocator with reference counts (pages may be shared by
// sequences with a common prefix), and a page table per sequence.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv/visible_set.h"
#include "kernels/common/ggml_types.h"
#include "kernels/cpu/attention.h"

namespace attnserve {

struct KvCacheShape {
  int32_t n_layers = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 16;  // tokens per page
};

// fp16 keys and values of num_pages pages for every layer. Page p has the
// same index in every layer, so one page table serves the whole model.
// Beside each page and KV head: the elementwise min and max of its keys
// (Quest's page bounds), kept by WriteKv as the page fills; 2 of every
// 2 * page_size key-and-value rows, i.e. 1/page_size more memory.
// The memory is the host's, or a device's (the CUDA backend's pool), which
// only that device's kernels touch: WriteKv is for host pools.
class KvCachePool {
 public:
  // Zero-filled memory for `elements` fp16 values, or an error status.
  using Allocator = std::function<absl::StatusOr<std::shared_ptr<fp16_t>>(size_t elements)>;

  // Host memory. Fails (RESOURCE_EXHAUSTED) rather than aborting when memory
  // is short.
  static absl::StatusOr<KvCachePool> Create(const KvCacheShape& shape, int32_t num_pages);
  // Memory from `allocate` (device memory when on_device), with
  // `scratch_pages` more pages past num_pages() that only the backend
  // writes (the padding rows of its decode steps).
  static absl::StatusOr<KvCachePool> Create(const KvCacheShape& shape, int32_t num_pages, const Allocator& allocate,
                                            bool on_device, int32_t scratch_pages = 0);

  bool on_device() const { return on_device_; }

  const KvCacheShape& shape() const { return shape_; }
  int32_t num_pages() const { return num_pages_; }  // the pages sequences are given
  int32_t scratch_pages() const { return scratch_pages_; }
  int32_t scratch_page(int32_t i) const { return num_pages_ + i; }
  // Pages of each layer's region: num_pages() + scratch_pages().
  int32_t layer_pages() const { return num_pages_ + scratch_pages_; }
  // Elements of one page of one layer: n_kv_heads * page_size * head_dim.
  int64_t page_elements() const;
  // Bytes of one page across all layers: keys, values and key bounds.
  int64_t bytes_per_page() const { return PageBytes(shape_); }
  static int64_t PageBytes(const KvCacheShape& shape);

  fp16_t* keys(int32_t layer);    // [layer_pages][n_kv_heads][page_size][head_dim]
  fp16_t* values(int32_t layer);
  fp16_t* key_min(int32_t layer);  // [layer_pages][n_kv_heads][head_dim]
  fp16_t* key_max(int32_t layer);

 private:
  fp16_t* Part(int part, int32_t layer, int64_t layer_elements) const;

  KvCacheShape shape_;
  int32_t num_pages_ = 0;
  int32_t scratch_pages_ = 0;
  bool on_device_ = false;
  // keys, values ([n_layers][layer_pages][...] each), key_min, key_max
  // ([n_layers][layer_pages][n_kv_heads][head_dim] each), one after the other.
  std::shared_ptr<fp16_t> memory_;
};

class PageAllocator {
 public:
  explicit PageAllocator(int32_t num_pages);

  int32_t num_pages() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }

  // A page with reference count 1, or RESOURCE_EXHAUSTED.
  absl::StatusOr<int32_t> Allocate();
  void AddRef(int32_t page);
  // Drops one reference; the page returns to the free list at zero.
  void Release(int32_t page);
  int32_t ref_count(int32_t page) const { return ref_counts_[page]; }

 private:
  std::vector<int32_t> free_;  // LIFO: recently freed pages are cache-warm
  std::vector<int32_t> ref_counts_;
};

// A page table entry whose page was given back while the sequence goes on:
// its keys are invisible to every later query (a streaming window moved
// past them), so the attention kernel never reads it.
inline constexpr int32_t kReleasedPage = -1;

// A table packed by head: every (layer, KV head) of a block has its own
// slice, so the heads that see only sinks + a recent window (DuoAttention's
// streaming heads) give their slices back as the window moves while the
// other heads keep every block. A page holds n_layers * n_kv_heads slices,
// any of which can serve any (layer, KV head): the sequence's pages are a
// pool of slices, and it holds about (windowed heads' sinks + window + the
// other heads' whole history) / (n_layers * n_kv_heads) pages.
struct HeadSlices {
  int32_t heads = 0;                    // n_layers * n_kv_heads; 0: not packed
  int32_t n_kv_heads = 0;
  int32_t pool_pages = 0;               // slice of (layer, page, g) = (layer * pool_pages + page) * n_kv_heads + g
  std::vector<int32_t> windowed_heads;  // layer * n_kv_heads + kv_head, sorted
  VisibleSet window;                    // what the windowed heads see
  std::vector<int32_t> table;           // [blocks][heads]: slice, or kReleasedPage once given back
  std::vector<int32_t> free;            // slices of carved pages that the table does not use
  int32_t carved_pages = 0;             // PageTable::pages[0, carved_pages) are in table or free
  int32_t released_blocks = 0;          // windowed heads' blocks [.., released_blocks) are given back
};

// Logical-to-physical page map of one sequence.
struct PageTable {
  // Block b's page, or kReleasedPage for pages given back early. Packed by
  // head: the pages whose slices the sequence holds, in no order.
  std::vector<int32_t> pages;
  int32_t num_tokens = 0;  // tokens whose K/V have been written
  HeadSlices slices;

  bool packed() const { return slices.heads > 0; }
};

// Makes an empty table packed by head over a pool whose layers hold
// pool_pages pages each (KvCachePool::layer_pages): the
// heads in `windowed_heads` see only `window`'s keys, the others every key.
PageTable PackedPageTable(const KvCacheShape& shape, int32_t pool_pages, std::vector<int32_t> windowed_heads,
                          VisibleSet window);

// Pages the table must hold for its K/V of positions [0, num_tokens) once
// the keys no query at or after `next_query_pos` sees are given back.
int32_t PagesNeeded(const PageTable& table, int32_t num_tokens, int32_t next_query_pos, int32_t page_size);

// Packed tables: gives every (layer, KV head) of the blocks up to
// num_tokens a slice, carving the pages added since the last call. Fails
// (RESOURCE_EXHAUSTED), changing nothing, when the held pages have too few
// slices, i.e. fewer pages than PagesNeeded. Nothing to do for other tables.
absl::Status AssignSlices(PageTable& table, int32_t num_tokens, int32_t page_size);

// Packed tables: the windowed heads give back the slices of the blocks no
// query at or after next_query_pos sees. Returns how many slices.
int32_t ReleaseWindowedSlices(PageTable& table, int32_t next_query_pos, int32_t page_size);

// Grows `table` so that positions [0, num_tokens) have pages. On failure
// nothing is allocated (all or nothing).
absl::Status ReservePages(PageTable& table, int32_t num_tokens, int32_t page_size, PageAllocator& allocator);
// Releases every page of the table and empties it (a packed table stays
// packed, with no slices).
void ReleasePages(PageTable& table, PageAllocator& allocator);
// Releases the table's pages [begin, end) (clamped to the table) that are
// still held, marking them kReleasedPage. Returns how many it released.
// Not for packed tables.
int32_t ReleasePageRange(PageTable& table, PageAllocator& allocator, int32_t begin, int32_t end);
// Positions [0, ReservedTokens) have K/V storage for every layer and KV head.
int64_t ReservedTokens(const PageTable& table, int32_t page_size);
// Pages the table still holds.
int32_t HeldPages(const PageTable& table);

// Writes K and V ([n_tokens][n_kv_heads * head_dim] floats, converted to
// fp16) for positions [first_pos, first_pos + n_tokens) of one layer, and
// the pages' key bounds: a page's first slot resets them, so a page
// rewritten from its start (recompute) gets its own. The pages must have
// been reserved.
void WriteKv(KvCachePool& pool, int32_t layer, const PageTable& table, int32_t first_pos,
             int32_t n_tokens, const float* k, const float* v);

// The attention kernel's view of one layer of a sequence.
PagedKv LayerView(KvCachePool& pool, int32_t layer, const PageTable& table, int32_t num_tokens);

}  // namespace attnserve
