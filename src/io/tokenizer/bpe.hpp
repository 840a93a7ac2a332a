// Byte-pair-encoding model of Hugging Face tokenizers ("type": "BPE"): vocabulary, ranked
// merges, ignore_merges, byte_fallback, unk_token/fuse_unk, continuing_subword_prefix and
// end_of_word_suffix.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kldq/io/document.hpp"

namespace kldq::io {

// Token ids index a table (id -> token): a hostile id would size it to gigabytes. Ids may leave at
// most this many unused slots past the tokens a file defines (docs/ARCHITECTURE.md, "Untrusted
// input"); real tokenizers number their tokens densely.
inline constexpr int64_t kMaxIdGap = int64_t(1) << 20;

// Words repeat: most of a text's words are encoded from this cache after the first few thousand.
// One per thread (Bpe itself holds no mutable state, so threads share one Bpe).
using WordCache = std::unordered_map<std::string, std::vector<int32_t>>;

class Bpe {
 public:
  // Parses the "model" object (vocab and merges validated against each other).
  explicit Bpe(const Doc& model);

  // Appends the ids of one pre-tokenized word (UTF-8), through `cache`.
  void encode_word(std::string_view word, std::vector<int32_t>& out, WordCache& cache) const;

  const std::vector<std::string>& id_to_token() const { return id_to_token_; }
  int32_t token_to_id(std::string_view token) const;  // -1 when absent

 private:
  struct Merge {
    int32_t rank;
    int32_t id;  // id of the merged token
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void word_symbols(std::string_view word, std::vector<int32_t>& ids) const;
  void merge_symbols(std::vector<int32_t>& ids) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
  int32_t unk_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  int32_t byte_ids_[256];  // ids of "<0xXX>" tokens for byte_fallback (-1 when absent)
};

}  // namespace kldq::io
