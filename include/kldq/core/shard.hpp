// Shards: a share i of n of a list of work items (sweep points, profile units), the items with
// index % n == i. Round-robin rather than contiguous ranges, so that each shard gets items from
// every part of the list (a profile's early units cost more than its late ones: each unit re-runs
// the blocks after its own).
#pragma once

#include <cstddef>
#include <string>

namespace kldq {

struct Shard {
  size_t index = 0, count = 1;
  bool whole() const { return count == 1; }
  bool owns(size_t item) const { return item % count == index; }
  // Items of a list of `total` this shard owns: ceil((total - index) / count).
  size_t size_of(size_t total) const {
    return total > index ? (total - index + count - 1) / count : 0;
  }
  std::string name() const;  // "i/n"
};

// "i/n" with 0 <= i < n; "" is the whole list. A ConfigError naming `option` and saying what the
// shard selects (`items`, e.g. "sweep points") otherwise.
Shard parse_shard(const std::string& text, const char* option, const char* items);

}  // namespace kldq
