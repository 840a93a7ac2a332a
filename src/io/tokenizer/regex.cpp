// Regex compilation (recursive descent over the pattern's code points) and matching
// (backtracking with continuations: a node matches at `pos` and hands each candidate end to the
// continuation, which decides; the first accepted candidate wins, giving leftmost-first
// alternation and greedy quantifiers as in Oniguruma/Perl). Every node visit and scanned character
// is charged to the search's budget, and the recursion depth is bounded (regex.hpp).
#include "kldq/io/tokenizer/regex.hpp"

#include <fmt/format.h>

#include "kldq/io/tokenizer/unicode.hpp"

namespace kldq::io {

// A continuation: called with the position where the preceding pattern ended.
struct Regex::Cont {
  bool (*fn)(const void* ctx, size_t pos);
  const void* ctx;
  bool operator()(size_t pos) const { return fn(ctx, pos); }
};

// One search: the text, the budget it draws from, the current recursion depth.
struct Regex::Run {
  std::u32string_view s;
  Budget* budget;
  const std::string* source;
  int depth = 0;
  uint64_t steps = 0;

  void spend(uint64_t n) {
    steps += n;
    if (n > budget->left)
      throw RegexError(
          fmt::format("regex '{}': more than {} steps on a text of {} characters (catastrophic "
                      "backtracking); this pattern cannot be used on such text",
                      *source, steps, s.size()));
    budget->left -= n;
  }
};

namespace {

thread_local uint64_t t_last_steps = 0;

// Counts a recursion level of a match for as long as it lives.
class DepthGuard {
 public:
  DepthGuard(int& depth, const std::string& source) : depth_(depth) {
    if (++depth_ > Regex::kMaxDepth) {
      --depth_;
      throw RegexError(fmt::format(
          "regex '{}': a match recursed more than {} levels (a repeated group over a long "
          "text); this pattern cannot be used on such text",
          source, Regex::kMaxDepth));
    }
  }
  ~DepthGuard() { --depth_; }
  DepthGuard(const DepthGuard&) = delete;
  DepthGuard& operator=(const DepthGuard&) = delete;

 private:
  int& depth_;
};

template <class F>
Regex::Cont make_cont(const F& f) {
  return {[](const void* ctx, size_t pos) { return (*static_cast<const F*>(ctx))(pos); }, &f};
}

bool item_matches(const Regex::CharSet::Item& it, char32_t c) {
  bool m = false;
  switch (it.kind) {
    case Regex::CharSet::Item::RANGE:
      m = c >= it.lo && c <= it.hi;
      break;
    case Regex::CharSet::Item::LETTER:
      m = unicode::is_letter(c);
      break;
    case Regex::CharSet::Item::NUMBER:
      m = unicode::is_number(c);
      break;
    case Regex::CharSet::Item::SPACE:
      m = unicode::is_space(c);
      break;
    case Regex::CharSet::Item::FOLD:
      m = unicode::simple_fold(c) == it.lo;
      break;
    case Regex::CharSet::Item::ANY_BUT_NEWLINE:
      m = c != '\n';
      break;
  }
  return m != it.negated;
}

}  // namespace

bool Regex::CharSet::contains(char32_t c) const {
  bool in = false;
  if (c < 128) {
    in = (ascii[c >> 6] >> (c & 63)) & 1;
  } else {
    for (const Item& it : items)
      if (item_matches(it, c)) {
        in = true;
        break;
      }
  }
  return in != negated;
}

class Regex::Parser {
 public:
  Parser(Regex& re, std::string_view pattern)
      : re_(re), p_(unicode::decode_utf8(pattern)), source_(pattern) {}

  int parse_all() {
    const int root = parse_alt(false);
    if (i_ != p_.size()) fail("unbalanced ')'");
    return root;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw RegexError(fmt::format("regex '{}': {} at offset {}", source_, what, i_));
  }
  bool at(char32_t c) const { return i_ < p_.size() && p_[i_] == c; }
  bool eat(char32_t c) {
    if (!at(c)) return false;
    ++i_;
    return true;
  }
  int add(Node n) {
    re_.nodes_.push_back(std::move(n));
    return static_cast<int>(re_.nodes_.size()) - 1;
  }
  int add_set(CharSet cs) {
    // Precompute ASCII membership from the items, so the hot path is one bit test.
    for (char32_t c = 0; c < 128; ++c) {
      bool in = (cs.ascii[c >> 6] >> (c & 63)) & 1;
      for (const auto& it : cs.items) in = in || item_matches(it, c);
      if (in) cs.ascii[c >> 6] |= uint64_t{1} << (c & 63);
    }
    re_.sets_.push_back(std::move(cs));
    Node n{Node::SET};
    n.set = static_cast<int>(re_.sets_.size()) - 1;
    return add(std::move(n));
  }
  void add_literal(CharSet& cs, char32_t c, bool icase) {
    if (icase)
      cs.items.push_back({CharSet::Item::FOLD, unicode::simple_fold(c), 0, false});
    else
      cs.items.push_back({CharSet::Item::RANGE, c, c, false});
  }

  int parse_alt(bool icase) {
    std::vector<int> alts{parse_seq(icase)};
    while (eat('|')) alts.push_back(parse_seq(icase));
    if (alts.size() == 1) return alts[0];
    Node n{Node::ALT};
    n.kids = std::move(alts);
    return add(std::move(n));
  }

  int parse_seq(bool icase) {
    Node n{Node::SEQ};
    while (i_ < p_.size() && !at('|') && !at(')')) n.kids.push_back(parse_repeat(icase));
    return add(std::move(n));
  }

  int parse_int() {
    if (i_ >= p_.size() || p_[i_] < '0' || p_[i_] > '9') fail("expected a number");
    int v = 0;
    while (i_ < p_.size() && p_[i_] >= '0' && p_[i_] <= '9') {
      v = v * 10 + static_cast<int>(p_[i_++] - '0');
      if (v > 100000) fail("repeat count too large");
    }
    return v;
  }

  int parse_repeat(bool icase) {
    int atom = parse_atom(icase);
    while (i_ < p_.size()) {
      int lo = 0, hi = -1;
      if (eat('*'))
        lo = 0;
      else if (eat('+'))
        lo = 1;
      else if (eat('?'))
        lo = 0, hi = 1;
      else if (at('{')) {
        ++i_;
        lo = hi = parse_int();
        if (eat(',')) hi = at('}') ? -1 : parse_int();
        if (!eat('}')) fail("expected '}'");
        if (hi >= 0 && hi < lo) fail("repeat range {n,m} with m < n");
      } else {
        break;
      }
      if (at('?') || at('+')) fail("lazy and possessive quantifiers are not supported");
      Node n{Node::REPEAT};
      n.kids = {atom};
      n.min = lo;
      n.max = hi;
      atom = add(std::move(n));
    }
    return atom;
  }

  int parse_group(bool icase) {
    if (++nesting_ > kMaxNesting) fail(fmt::format("groups nested deeper than {}", kMaxNesting));
    const int node = parse_group_body(icase);
    --nesting_;
    return node;
  }

  int parse_group_body(bool icase) {
    if (eat('?')) {
      if (eat(':')) return close_group(parse_alt(icase));
      if (eat('!') || (at('=') && (++i_, true))) {
        const bool negate = p_[i_ - 1] == '!';
        Node n{Node::LOOKAHEAD};
        n.kids = {parse_alt(icase)};
        n.negate = negate;
        return close_group(add(std::move(n)));
      }
      if (eat('i') && eat(':')) return close_group(parse_alt(true));
      fail("unsupported group syntax");
    }
    return close_group(parse_alt(icase));  // capturing group: captures are not needed
  }

  int close_group(int node) {
    if (!eat(')')) fail("expected ')'");
    return node;
  }

  // After \p or \P: the property, one letter or braced (L, Letter, N, Number).
  CharSet::Item::Kind parse_property() {
    std::u32string name;
    if (eat('{')) {
      while (i_ < p_.size() && !at('}')) name.push_back(p_[i_++]);
      if (!eat('}')) fail("expected '}' after \\p{");
    } else if (i_ < p_.size()) {
      name.push_back(p_[i_++]);
    }
    if (name == U"L" || name == U"Letter") return CharSet::Item::LETTER;
    if (name == U"N" || name == U"Number") return CharSet::Item::NUMBER;
    fail(fmt::format("unsupported property \\p{{{}}}", unicode::encode_utf8(name)));
  }

  // After \x: two hex digits, or up to 8 in braces.
  char32_t parse_hex() {
    const bool braced = eat('{');
    char32_t v = 0;
    int digits = 0;
    auto hex = [](char32_t h) -> int {
      if (h >= '0' && h <= '9') return static_cast<int>(h - '0');
      if ((h | 0x20) >= 'a' && (h | 0x20) <= 'f') return static_cast<int>((h | 0x20) - 'a' + 10);
      return -1;
    };
    while (i_ < p_.size() && hex(p_[i_]) >= 0 && (braced || digits < 2)) {
      v = v * 16 + static_cast<char32_t>(hex(p_[i_++]));
      if (++digits > 8) fail("malformed \\x escape");
    }
    if (digits == 0 || (braced && !eat('}'))) fail("malformed \\x escape");
    return v;
  }

  // An escape after '\': a single character (returned) or a class item added to `cs`
  // (\p{..}, \P{..}, \s, \S; returns nullopt).
  std::optional<char32_t> parse_escape(CharSet& cs) {
    if (i_ >= p_.size()) fail("pattern ends with '\\'");
    const char32_t c = p_[i_++];
    using I = CharSet::Item;
    switch (c) {
      case 'p':
      case 'P':
        cs.items.push_back({parse_property(), 0, 0, c == 'P'});
        return std::nullopt;
      case 's':
        cs.items.push_back({I::SPACE, 0, 0, false});
        return std::nullopt;
      case 'S':
        cs.items.push_back({I::SPACE, 0, 0, true});
        return std::nullopt;
      case 'r':
        return U'\r';
      case 'n':
        return U'\n';
      case 't':
        return U'\t';
      case 'f':
        return U'\f';
      case 'v':
        return U'\v';
      case 'x':
        return parse_hex();
      default:
        if ((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'))
          fail(fmt::format("unsupported escape \\{}", static_cast<char>(c)));
        return c;  // escaped punctuation stands for itself
    }
  }

  int parse_class(bool icase) {
    CharSet cs;
    cs.negated = eat('^');
    bool first = true;
    while (i_ < p_.size() && (first || !at(']'))) {
      first = false;
      if (at('[')) fail("nested character classes are not supported");
      std::optional<char32_t> lo = eat('\\') ? parse_escape(cs) : std::optional<char32_t>(p_[i_++]);
      if (!lo) continue;  // a property item
      if (at('-') && i_ + 1 < p_.size() && p_[i_ + 1] != ']') {
        ++i_;
        CharSet unused;
        std::optional<char32_t> hi =
            eat('\\') ? parse_escape(unused) : std::optional<char32_t>(p_[i_++]);
        if (!hi) fail("class range ends in a property");
        if (*hi < *lo) fail("class range out of order");
        if (icase) fail("ranges inside (?i:...) are not supported");
        cs.items.push_back({CharSet::Item::RANGE, *lo, *hi, false});
      } else {
        add_literal(cs, *lo, icase);
      }
    }
    if (!eat(']')) fail("unterminated character class");
    return add_set(std::move(cs));
  }

  int parse_atom(bool icase) {
    if (i_ >= p_.size()) fail("expected an expression");
    const char32_t c = p_[i_++];
    CharSet cs;
    switch (c) {
      case '(':
        return parse_group(icase);
      case '[':
        return parse_class(icase);
      case '\\':
        if (auto single = parse_escape(cs)) add_literal(cs, *single, icase);
        return add_set(std::move(cs));
      case '.':
        cs.items.push_back({CharSet::Item::ANY_BUT_NEWLINE, 0, 0, false});
        return add_set(std::move(cs));
      case '^':
      case '$':
        fail("anchors are not supported");
      case '*':
      case '+':
      case '?':
      case '{':
        fail("quantifier without an expression");
      default:
        add_literal(cs, c, icase);
        return add_set(std::move(cs));
    }
  }

  Regex& re_;
  std::u32string p_;
  std::string_view source_;
  size_t i_ = 0;
  int nesting_ = 0;
};

Regex Regex::compile(std::string_view pattern) {
  Regex re;
  re.source_ = pattern;
  Parser parser(re, pattern);
  re.root_ = parser.parse_all();
  return re;
}

bool Regex::match_seq(Run& r, const Node& n, size_t idx, size_t pos, const Cont& k) const {
  if (idx == n.kids.size()) return k(pos);
  auto next = [&](size_t p) { return match_seq(r, n, idx + 1, p, k); };
  return match(r, n.kids[idx], pos, make_cont(next));
}

bool Regex::match_repeat(Run& r, const Node& n, int count, size_t pos, const Cont& k) const {
  if (n.max < 0 || count < n.max) {
    // An iteration that consumed nothing would loop forever: it must advance.
    auto again = [&](size_t p) { return p > pos && match_repeat(r, n, count + 1, p, k); };
    if (match(r, n.kids[0], pos, make_cont(again))) return true;
  }
  return count >= n.min && k(pos);
}

bool Regex::match(Run& r, int node, size_t pos, const Cont& k) const {
  const DepthGuard depth(r.depth, source_);
  r.spend(1);
  const std::u32string_view s = r.s;
  const Node& n = nodes_[static_cast<size_t>(node)];
  switch (n.kind) {
    case Node::SET:
      return pos < s.size() && sets_[static_cast<size_t>(n.set)].contains(s[pos]) && k(pos + 1);
    case Node::SEQ:
      return match_seq(r, n, 0, pos, k);
    case Node::ALT:
      for (int kid : n.kids)
        if (match(r, kid, pos, k)) return true;
      return false;
    case Node::REPEAT: {
      const Node& child = nodes_[static_cast<size_t>(n.kids[0])];
      if (child.kind != Node::SET) return match_repeat(r, n, 0, pos, k);
      // Single-character body: take the longest run, then give back one at a time.
      const CharSet& cs = sets_[static_cast<size_t>(child.set)];
      const size_t limit =
          n.max < 0 ? s.size() : std::min(s.size(), pos + static_cast<size_t>(n.max));
      size_t end = pos;
      while (end < limit && cs.contains(s[end])) ++end;
      r.spend(end - pos);  // the scan, and each give-back below, are steps too
      for (size_t e = end + 1; e-- > pos + static_cast<size_t>(n.min);) {
        r.spend(1);
        if (k(e)) return true;
      }
      return false;
    }
    case Node::LOOKAHEAD: {
      auto accept = [](size_t) { return true; };
      const bool found = match(r, n.kids[0], pos, make_cont(accept));
      return found != n.negate && k(pos);
    }
  }
  return false;
}

std::optional<std::pair<size_t, size_t>> Regex::find(std::u32string_view s, size_t start,
                                                     Budget* budget) const {
  Budget own(s.size() - std::min(start, s.size()));
  Run r{s, budget ? budget : &own, &source_};
  std::optional<std::pair<size_t, size_t>> found;
  for (size_t p = start; p <= s.size() && !found; ++p) {
    size_t end = 0;
    auto record = [&](size_t e) {
      end = e;
      return true;
    };
    if (match(r, root_, p, make_cont(record))) found = std::make_pair(p, end);
  }
  t_last_steps = r.steps;
  return found;
}

bool Regex::full_match(std::u32string_view s) const {
  Budget budget(s.size());
  Run r{s, &budget, &source_};
  auto whole = [&](size_t e) { return e == s.size(); };
  const bool ok = match(r, root_, 0, make_cont(whole));
  t_last_steps = r.steps;
  return ok;
}

uint64_t Regex::last_steps() {
  return t_last_steps;
}

}  // namespace kldq::io
