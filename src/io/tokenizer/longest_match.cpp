// Aho-Corasick over reversed patterns. Reading the text backwards, after s[p] the automaton's
// state is the longest suffix of reverse(s[p..]) that is a prefix of some reversed pattern, i.e.
// the longest trie string that s[p..] starts with; every pattern starting at p is a suffix of
// that state's string, so the state's `best` (the longest one, found along the failure links
// once at build time) is the leftmost-longest answer at p. Failure transitions during the scan
// are amortised by the state depth: O(text + total pattern length) in all.
#include "longest_match.hpp"

#include <deque>

namespace kldq::io {

int32_t LongestMatch::child(int32_t node, char32_t c) const {
  const auto it = edges_.find(static_cast<uint64_t>(node) << 32 | c);
  return it == edges_.end() ? -1 : it->second;
}

LongestMatch::LongestMatch(const std::vector<std::u32string>& patterns) {
  std::vector<std::pair<int32_t, char32_t>> parent{{-1, 0}};  // per node: parent, edge label
  for (size_t i = 0; i < patterns.size(); ++i) {
    int32_t node = 0;
    for (auto it = patterns[i].rbegin(); it != patterns[i].rend(); ++it) {
      int32_t next = child(node, *it);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_.emplace_back();
        parent.emplace_back(node, *it);
        edges_.emplace(static_cast<uint64_t>(node) << 32 | *it, next);
      }
      node = next;
    }
    if (node != 0 && nodes_[node].best < 0) nodes_[node].best = static_cast<int32_t>(i);
  }
  // Breadth first, so a node's failure target (shallower) is final before the node is.
  std::vector<std::vector<int32_t>> children(nodes_.size());
  for (size_t v = 1; v < nodes_.size(); ++v) children[parent[v].first].push_back(v);
  std::deque<int32_t> queue(children[0].begin(), children[0].end());
  while (!queue.empty()) {
    const int32_t v = queue.front();
    queue.pop_front();
    const auto [u, c] = parent[v];
    if (u != 0) {
      int32_t f = nodes_[u].fail, next;
      while ((next = child(f, c)) < 0 && f != 0) f = nodes_[f].fail;
      nodes_[v].fail = next >= 0 ? next : 0;
    }
    // A node's own pattern is longer than any on its failure chain.
    if (nodes_[v].best < 0) nodes_[v].best = nodes_[nodes_[v].fail].best;
    queue.insert(queue.end(), children[v].begin(), children[v].end());
  }
}

std::vector<int32_t> LongestMatch::longest_at(const std::u32string& s) const {
  std::vector<int32_t> out(s.size(), -1);
  if (empty()) return out;
  int32_t state = 0;
  for (size_t p = s.size(); p-- > 0;) {
    int32_t next;
    while ((next = child(state, s[p])) < 0 && state != 0) state = nodes_[state].fail;
    state = next >= 0 ? next : 0;
    out[p] = nodes_[state].best;
  }
  return out;
}

}  // namespace kldq::io
