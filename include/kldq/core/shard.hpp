// Shards: a share i of n of a list of work items (sweep points, profile units), the items with
// index % n == i. Round-robin rather than contiguous ranges, so that each shard gets items from
// every part of the list (a profile's early units cost more than its late ones: each unit re-runs
// the blocks after its own).
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

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

// A shard's output as read for merging: its file (for messages) and its JSON, which records
// "shard": {"index", "count", ...}.
struct ShardFile {
  std::string path;
  nlohmann::json json;
};

// The files in shard order after checking, each with one ConfigError naming the files: every
// file is a shard (`made_by` says what writes one), all of one split, each given once, none
// missing; and they agree on every top-level key except `per_run` (the first differing place is
// named: "a.json and b.json disagree on calibration.seed: 0 vs 1"). `what` names the merge.
std::vector<const ShardFile*> check_shards(const std::vector<ShardFile>& files, const char* what,
                                           const char* made_by,
                                           const std::set<std::string>& per_run);
// A whole number in the file's "shard" object.
size_t shard_field(const ShardFile& f, const char* key);
// A run's own figure (seconds, bytes) summed over the shards (0 where a file has none).
double summed_figure(const std::vector<const ShardFile*>& shards, const char* key);
// The merged run's figures common to every merge: "seconds" (the work of all shards, not the
// wall time of a parallel run) and "streamed_bytes" summed, "peak_cuda_bytes" and
// "peak_host_bytes" their maxima, and the number of shards.
struct MergedFigures {
  double seconds = 0;
  uint64_t streamed_bytes = 0, peak_cuda_bytes = 0, peak_host_bytes = 0;
  uint64_t shards = 0;
};
MergedFigures merged_figures(const std::vector<const ShardFile*>& shards);

}  // namespace kldq
