// A backtracking regex matcher over code points for the pre-tokenizer patterns of Hugging Face
// tokenizers (GPT-2, Llama-3, Qwen2), with Oniguruma's semantics for what they use: leftmost-
// first alternation, greedy quantifiers (* + ? {n,m}), non-capturing and case-insensitive
// groups ((?:...), (?i:...)), lookahead ((?=...), (?!...)), classes with ranges and negation,
// \p{L} \p{N} \P{..} \s \S, '.', and escapes. Anything else is rejected when compiling, never
// matched approximately. std::regex has no Unicode properties, and the GPU machine has no
// PCRE2 or ICU headers.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kldq::io {

// A pattern that cannot be compiled; what() names the construct and its offset.
class RegexError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Regex {
 public:
  // Compiles a UTF-8 pattern (RegexError on unsupported or malformed syntax).
  static Regex compile(std::string_view pattern);

  // Leftmost match starting at or after `start`: {begin, end} in code points.
  std::optional<std::pair<size_t, size_t>> find(std::u32string_view s, size_t start) const;

  // Continuation of a match (internal; public so the matcher's helpers can build one).
  struct Cont;

  struct CharSet {
    uint64_t ascii[2] = {0, 0};  // membership of code points < 128 (before `negated`)
    struct Item {
      enum Kind { RANGE, LETTER, NUMBER, SPACE, FOLD, ANY_BUT_NEWLINE } kind;
      char32_t lo = 0, hi = 0;  // RANGE bounds; FOLD: the folded code point
      bool negated = false;     // \P{..}, \S
    };
    std::vector<Item> items;  // tested for code points >= 128
    bool negated = false;
    bool contains(char32_t c) const;
  };

 private:
  struct Node {
    enum Kind { SET, SEQ, ALT, REPEAT, LOOKAHEAD } kind;
    int set = -1;           // SET: index into sets_
    std::vector<int> kids;  // SEQ, ALT; REPEAT and LOOKAHEAD: one child
    int min = 0, max = 0;   // REPEAT; max < 0: unbounded
    bool negate = false;    // LOOKAHEAD
  };
  class Parser;
  friend class Parser;

  bool match(std::u32string_view s, int node, size_t pos, const Cont& k) const;
  bool match_seq(std::u32string_view s, const Node& n, size_t idx, size_t pos, const Cont& k) const;
  bool match_repeat(std::u32string_view s, const Node& n, int count, size_t pos,
                    const Cont& k) const;

  std::vector<Node> nodes_;
  std::vector<CharSet> sets_;
  int root_ = -1;
};

}  // namespace kldq::io
