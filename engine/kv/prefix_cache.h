// Prefix caching over full KV pages.
//
// A full page is identified by a hash chain: its key is (key of the previous
// page, the page's tokens, a salt). The salt carries everything besides the
// tokens that changes the page's K/V: the hash of the request's
// prefill-affecting attention policy, and a per-request value when a request
// must not share with others. The cache holds one reference on each page it
// knows; a page whose only reference is the cache's is free to be reused and
// is evicted least-recently-used when the allocator runs dry.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv/kv_cache.h"

namespace attnserve {

class PrefixCache {
 public:
  PrefixCache(PageAllocator& allocator, int32_t page_size);

  // The longest run of cached full pages that starts `tokens`, each with a
  // reference added for the caller. At most max_pages pages.
  std::vector<int32_t> Lookup(std::span<const int32_t> tokens, uint64_t salt, int32_t max_pages);

  // Registers the full pages of a sequence: page i of `pages` holds tokens
  // [i * page_size, (i + 1) * page_size). Pages already registered (or whose
  // key is already cached under another page) are skipped, and so are
  // entries the sequence has released (kReleasedPage): such a page may
  // already hold another sequence's K/V. A page registered before its
  // sequence released it stays: its K/V are still those of that prefix
  // under that salt, for the sequence's siblings and its own recompute.
  void Insert(std::span<const int32_t> tokens, std::span<const int32_t> pages, uint64_t salt);

  // A page for writing: from the free list, else by evicting the least
  // recently used page that only the cache holds. RESOURCE_EXHAUSTED when
  // neither exists.
  absl::StatusOr<int32_t> Allocate();

  // Pages that Allocate could still hand out.
  int32_t num_available() const;
  int32_t num_cached() const { return static_cast<int32_t>(entries_.size()); }

 private:
  struct Entry {
    uint64_t key;
    int32_t page;
    std::list<int32_t>::iterator lru;  // position in lru_
  };
  uint64_t PageKey(uint64_t parent, std::span<const int32_t> page_tokens, uint64_t salt) const;

  PageAllocator& allocator_;
  int32_t page_size_;
  std::unordered_map<uint64_t, Entry> entries_;         // key -> entry
  std::unordered_map<int32_t, uint64_t> key_of_page_;   // page -> key
  std::list<int32_t> lru_;                              // pages, least recent first
};

}  // namespace attnserve
