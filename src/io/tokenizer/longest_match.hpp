// Leftmost-longest matching of a set of literal strings (tokenizer.json's added tokens) in time
// linear in the text: an Aho-Corasick automaton over the reversed patterns, run over the reversed
// text, gives at every position the longest pattern that starts there.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace kldq::io {

class LongestMatch {
 public:
  LongestMatch() = default;
  // patterns: non-empty strings; equal ones resolve to the first.
  explicit LongestMatch(const std::vector<std::u32string>& patterns);
  bool empty() const { return nodes_.size() <= 1; }
  // [s.size()]: the index of the longest pattern starting at each position of s, or -1.
  std::vector<int32_t> longest_at(const std::u32string& s) const;

 private:
  struct Node {
    int32_t fail = 0;   // the node of the longest proper suffix that is in the trie
    int32_t best = -1;  // the longest pattern that is a suffix of this node's string
  };
  int32_t child(int32_t node, char32_t c) const;  // -1 when absent
  std::vector<Node> nodes_{1};                    // [0]: the root (empty string)
  std::unordered_map<uint64_t, int32_t> edges_;   // (node << 32 | code point) -> child
};

}  // namespace kldq::io
