// A backtracking regex matcher over code points for the pre-tokenizer patterns of Hugging Face
// tokenizers (GPT-2, Llama-3, Qwen2), with Oniguruma's semantics for what they use: leftmost-
// first alternation, greedy quantifiers (* + ? {n,m}), non-capturing and case-insensitive
// groups ((?:...), (?i:...)), lookahead ((?=...), (?!...)), classes with ranges and negation,
// \p{L} \p{N} \P{..} \s \S, '.', and escapes. Anything else is rejected when compiling, never
// matched approximately. std::regex has no Unicode properties, and the GPU machine has no
// PCRE2 or ICU headers.
//
// Bounded, since patterns come from untrusted files: groups nest at most kMaxNesting deep, a
// match recurses at most kMaxDepth levels (a repeated group recurses once per iteration), and
// every search has a step budget (Budget). Past a bound the search throws RegexError naming the
// pattern; it never overflows the stack or runs for exponential time. The pre-tokenizer patterns
// of GPT-2, Llama-3 and Qwen2 use a few dozen steps per character on adversarial text
// (at most 29 on the texts of tests/io/test_tokenizer_units.cpp), far below the budget.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kldq/core/error.hpp"

namespace kldq::io {

// A pattern that cannot be compiled, or a search past its bounds; what() names the pattern (and
// the construct and its offset). An IoError: patterns come from files.
class RegexError : public IoError {
 public:
  using IoError::IoError;
};

class Regex {
 public:
  static constexpr int kMaxNesting = 64;  // nested groups in a pattern
  static constexpr int kMaxDepth = 2000;  // recursion levels of one match
  // Steps (node visits and characters scanned) a search may take: kBaseSteps plus
  // kStepsPerChar per code point of the text it searches, shared by every call given the same
  // Budget (the pre-tokenizer's matches over one text share one).
  static constexpr uint64_t kBaseSteps = 1000000, kStepsPerChar = 2000;
  struct Budget {
    uint64_t left;
    explicit Budget(size_t chars) : left(kBaseSteps + kStepsPerChar * uint64_t(chars)) {}
  };

  // Compiles a UTF-8 pattern (RegexError on unsupported or malformed syntax).
  static Regex compile(std::string_view pattern);

  // Leftmost match starting at or after `start`: {begin, end} in code points. RegexError when
  // the search exceeds `budget` (a budget for s.size() - start characters when null) or kMaxDepth.
  std::optional<std::pair<size_t, size_t>> find(std::u32string_view s, size_t start,
                                                Budget* budget = nullptr) const;
  // Whether the whole of `s` matches (for layer selectors); RegexError as for find.
  bool full_match(std::u32string_view s) const;
  // Steps the last search on this thread took (tests measure the real patterns' cost).
  static uint64_t last_steps();

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
  struct Run;  // one search: the text, its budget and the recursion depth

  bool match(Run& r, int node, size_t pos, const Cont& k) const;
  bool match_seq(Run& r, const Node& n, size_t idx, size_t pos, const Cont& k) const;
  bool match_repeat(Run& r, const Node& n, int count, size_t pos, const Cont& k) const;

  std::string source_;  // the pattern, for messages
  std::vector<Node> nodes_;
  std::vector<CharSet> sets_;
  int root_ = -1;
};

}  // namespace kldq::io
