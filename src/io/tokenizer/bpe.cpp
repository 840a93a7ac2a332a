// BPE word encoding: split into characters, then merge the lowest-ranked adjacent pair until no
// merge applies, with a priority queue over a linked list of symbols (O(n log n), so a 100 KB
// word is as fine as a short one). Ties in rank go to the leftmost pair, as in tokenizers.
#include "bpe.hpp"

#include <algorithm>
#include <queue>

#include "kldq/io/tokenizer/unicode.hpp"

namespace kldq::io {
namespace {

constexpr size_t kCacheLimit = 200000;

// Length of the UTF-8 sequence that starts with byte b (input is valid UTF-8 here).
size_t utf8_len(unsigned char b) {
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

}  // namespace

Bpe::Bpe(const Doc& model) {
  if (model.has("dropout")) {
    const Doc dropout = model["dropout"];
    if (!dropout.json().is_number()) dropout.fail("expected a number or null");
    if (dropout.json().get<double>() != 0.0)
      dropout.fail("BPE dropout is not supported (tokenization must be deterministic)");
  }
  const Doc vocab = model["vocab"];
  if (!vocab.json().is_object()) vocab.fail("expected an object of token -> id");
  const int64_t max_id = static_cast<int64_t>(vocab.json().size()) + kMaxIdGap;
  for (const auto& [token, id] : vocab.json().items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > max_id)
      vocab.fail(fmt::format("token '{}' has an invalid id (0 to {}: the vocabulary and {} more)",
                             token, max_id, kMaxIdGap));
    const auto i = static_cast<int32_t>(id.get<int64_t>());
    vocab_[token] = i;
    if (id_to_token_.size() <= static_cast<size_t>(i)) id_to_token_.resize(i + 1);
    id_to_token_[i] = token;
  }
  prefix_ = model.str_or("continuing_subword_prefix", "");
  suffix_ = model.str_or("end_of_word_suffix", "");
  fuse_unk_ = model.bool_or("fuse_unk", false);
  byte_fallback_ = model.bool_or("byte_fallback", false);
  ignore_merges_ = model.bool_or("ignore_merges", false);
  if (model.has("unk_token")) {
    unk_ = token_to_id(model["unk_token"].str());
    if (unk_ < 0) model["unk_token"].fail("unk_token is not in the vocabulary");
  }
  for (int b = 0; b < 256; ++b) byte_ids_[b] = token_to_id(fmt::format("<0x{:02X}>", b));
  const Doc merges = model["merges"];
  const size_t n = merges.size();
  merges_.reserve(n);
  for (size_t r = 0; r < n; ++r) {
    const Doc m = merges[r];
    std::string a, b;
    if (m.json().is_string()) {  // "a b"
      const std::string s = m.str();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        m.fail("a merge is two tokens separated by one space");
      a = s.substr(0, sp), b = s.substr(sp + 1);
    } else if (m.json().is_array() && m.size() == 2) {  // ["a", "b"]
      a = m[0].str(), b = m[1].str();
    } else {
      m.fail("a merge is \"a b\" or [\"a\", \"b\"]");
    }
    const int32_t ia = token_to_id(a), ib = token_to_id(b);
    const std::string merged = a + (b.rfind(prefix_, 0) == 0 ? b.substr(prefix_.size()) : b);
    const int32_t im = token_to_id(merged);
    if (ia < 0 || ib < 0 || im < 0)
      m.fail(fmt::format("merge names a token missing from the vocabulary ('{}')", ia < 0 ? a
                                                                                   : ib < 0
                                                                                       ? b
                                                                                       : merged));
    merges_.emplace(pair_key(ia, ib), Merge{static_cast<int32_t>(r), im});
  }
}

int32_t Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  return it == vocab_.end() ? -1 : it->second;
}

void Bpe::word_symbols(std::string_view word, std::vector<int32_t>& ids) const {
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t len = std::min(utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
    std::string piece(word.substr(i, len));
    if (i > 0) piece = prefix_ + piece;
    if (i + len == word.size()) piece += suffix_;
    const int32_t id = token_to_id(piece);
    if (id >= 0) {
      ids.push_back(id);
      last_unk = false;
    } else if (byte_fallback_ && std::all_of(word.begin() + i, word.begin() + i + len, [&](char c) {
                 return byte_ids_[static_cast<unsigned char>(c)] >= 0;
               })) {
      for (size_t k = i; k < i + len; ++k)
        ids.push_back(byte_ids_[static_cast<unsigned char>(word[k])]);
      last_unk = false;
    } else if (unk_ >= 0) {
      if (!(fuse_unk_ && last_unk)) ids.push_back(unk_);
      last_unk = true;
    }
    i += len;
  }
}

void Bpe::merge_symbols(std::vector<int32_t>& ids) const {
  const int n = static_cast<int>(ids.size());
  if (n < 2) return;
  std::vector<int> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  struct Cand {
    int32_t rank;
    int pos;
    int32_t id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    auto it = merges_.find(pair_key(ids[pos], ids[next[pos]]));
    if (it != merges_.end()) heap.push({it->second.rank, pos, it->second.id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int right = next[c.pos];
    if (!alive[c.pos] || right < 0) continue;
    // Stale entry: the pair at this position changed since it was queued.
    auto it = merges_.find(pair_key(ids[c.pos], ids[right]));
    if (it == merges_.end() || it->second.id != c.id) continue;
    ids[c.pos] = c.id;
    alive[right] = 0;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  int w = 0;
  for (int i = 0; i < n; ++i)
    if (alive[i]) ids[w++] = ids[i];
  ids.resize(w);
}

void Bpe::encode_word(std::string_view word, std::vector<int32_t>& out, WordCache& cache) const {
  if (word.empty()) return;
  std::string key(word);
  if (auto it = cache.find(key); it != cache.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  std::vector<int32_t> ids;
  const int32_t whole = ignore_merges_ ? token_to_id(word) : -1;
  if (whole >= 0) {
    ids.push_back(whole);
  } else {
    word_symbols(word, ids);
    merge_symbols(ids);
  }
  out.insert(out.end(), ids.begin(), ids.end());
  if (cache.size() >= kCacheLimit) cache.clear();
  cache.emplace(std::move(key), std::move(ids));
}

}  // namespace kldq::io
