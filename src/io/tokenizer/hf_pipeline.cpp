// Normalizers, pre-tokenizers and decoders of tokenizer.json, following the tokenizers library
// (Rust) rule for rule: split behaviours, ByteLevel's byte alphabet and GPT-2 regex, Metaspace's
// prepend schemes, and the decoders' handling of byte tokens and invalid UTF-8.
#include "hf_pipeline.hpp"

#include <algorithm>
#include <array>

#include "kldq/io/tokenizer/unicode.hpp"

namespace kldq::io {
namespace {

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex).
constexpr const char* kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct ByteTable {
  std::array<char32_t, 256> to_char{};
  ByteTable() {
    // Printable Latin-1 bytes stand for themselves; the rest map to U+0100.. in byte order.
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
    }
  }
};
const ByteTable& byte_table() {
  static const ByteTable t;
  return t;
}

struct Segment {
  size_t b, e;
  bool match;
};

// Covers s with alternating gap/match segments (empty ones dropped).
std::vector<Segment> segments(size_t n, const std::vector<std::pair<size_t, size_t>>& m,
                              bool invert) {
  std::vector<Segment> out;
  size_t pos = 0;
  for (const auto& [b, e] : m) {
    if (b > pos) out.push_back({pos, b, invert});
    if (e > b) out.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < n) out.push_back({pos, n, invert});
  return out;
}

// tokenizers' SplitDelimiterBehavior applied to segments; returns the kept spans.
std::vector<Segment> apply_behavior(const std::vector<Segment>& segs, PreTokenizer::Behavior b) {
  std::vector<Segment> acc;
  bool prev_match = false;
  switch (b) {
    case PreTokenizer::REMOVED:
      for (const auto& s : segs)
        if (!s.match) acc.push_back(s);
      return acc;
    case PreTokenizer::ISOLATED:
      return segs;
    case PreTokenizer::MERGED_WITH_PREVIOUS:
      for (const auto& s : segs) {
        if (s.match && !prev_match && !acc.empty())
          acc.back().e = s.e;
        else
          acc.push_back(s);
        prev_match = s.match;
      }
      return acc;
    case PreTokenizer::MERGED_WITH_NEXT:
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !prev_match && !acc.empty())
          acc.back().b = it->b;
        else
          acc.push_back(*it);
        prev_match = it->match;
      }
      std::reverse(acc.begin(), acc.end());
      return acc;
    case PreTokenizer::CONTIGUOUS:
      for (const auto& s : segs) {
        if (s.match == prev_match && !acc.empty())
          acc.back().e = s.e;
        else
          acc.push_back(s);
        prev_match = s.match;
      }
      return acc;
  }
  return acc;
}

void split_pieces(std::vector<std::u32string>& pieces, PreTokenizer::Behavior behavior,
                  const std::function<std::vector<Segment>(const std::u32string&)>& find) {
  std::vector<std::u32string> out;
  out.reserve(pieces.size());
  for (const auto& p : pieces)
    for (const auto& s : apply_behavior(find(p), behavior))
      if (s.e > s.b) out.push_back(p.substr(s.b, s.e - s.b));
  pieces = std::move(out);
}

PreTokenizer::Behavior parse_behavior(const Doc& j) {
  const std::string b = j.str();
  if (b == "Removed") return PreTokenizer::REMOVED;
  if (b == "Isolated") return PreTokenizer::ISOLATED;
  if (b == "MergedWithPrevious") return PreTokenizer::MERGED_WITH_PREVIOUS;
  if (b == "MergedWithNext") return PreTokenizer::MERGED_WITH_NEXT;
  if (b == "Contiguous") return PreTokenizer::CONTIGUOUS;
  j.fail(fmt::format("unknown split behavior '{}'", b));
}

}  // namespace

std::u32string u32(const std::string& s) {
  return unicode::decode_utf8(s);
}

std::u32string replace_all(const std::u32string& s, const Pattern& p, const std::u32string& with) {
  std::u32string out;
  size_t pos = 0;
  for (const auto& [b, e] : p.find_all(s)) {
    out.append(s, pos, b - pos);
    out += with;
    pos = e;
  }
  out.append(s, pos, std::u32string::npos);
  return out;
}

MetaspaceOptions MetaspaceOptions::parse(const Doc& j) {
  MetaspaceOptions m;
  if (j.has("replacement")) {
    const std::u32string r = u32(j["replacement"].str());
    if (r.size() != 1) j["replacement"].fail("expected a single character");
    m.replacement = r[0];
  }
  // Older files spell the scheme as add_prefix_space (true: "always").
  const std::string scheme =
      j.str_or("prepend_scheme", j.bool_or("add_prefix_space", true) ? "always" : "never");
  if (scheme == "always")
    m.prepend = ALWAYS;
  else if (scheme == "first")
    m.prepend = FIRST;
  else if (scheme == "never")
    m.prepend = NEVER;
  else
    j["prepend_scheme"].fail(fmt::format("unknown prepend_scheme '{}'", scheme));
  return m;
}

char32_t byte_to_char(unsigned char b) {
  return byte_table().to_char[b];
}

int char_to_byte(char32_t c) {
  static const auto inverse = [] {
    std::array<int, 324> inv{};
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[byte_table().to_char[b]] = b;
    return inv;
  }();
  return c < inverse.size() ? inverse[c] : -1;
}

Pattern Pattern::parse(const Doc& j) {
  Pattern p;
  if (j.has("String")) {
    p.literal = u32(j["String"].str());
    if (p.literal.empty()) j["String"].fail("empty pattern");
  } else if (j.has("Regex")) {
    p.where = j["Regex"].where();
    try {
      p.regex = Regex::compile(j["Regex"].str());
    } catch (const RegexError& e) {
      j["Regex"].fail(e.what());
    }
  } else {
    j.fail("a pattern is {\"String\": ...} or {\"Regex\": ...}");
  }
  return p;
}

std::vector<std::pair<size_t, size_t>> Pattern::find_all(std::u32string_view s) const {
  std::vector<std::pair<size_t, size_t>> out;
  size_t pos = 0;
  // One budget for the whole text: a pattern cheap per match but quadratic over the text (every
  // search scanning to the end) fails too.
  Regex::Budget budget(s.size());
  while (pos <= s.size()) {
    if (regex) {
      std::optional<std::pair<size_t, size_t>> m;
      try {
        m = regex->find(s, pos, &budget);
      } catch (const RegexError& e) {
        throw IoError(fmt::format("{}: {}", where, e.what()));
      }
      if (!m) break;
      if (m->second == m->first) {  // empty matches delimit nothing
        pos = m->first + 1;
        continue;
      }
      out.push_back(*m);
      pos = m->second;
    } else {
      const size_t b = s.find(literal, pos);
      if (b == std::u32string_view::npos) break;
      out.emplace_back(b, b + literal.size());
      pos = b + literal.size();
    }
  }
  return out;
}

Normalizer Normalizer::parse(const Doc& j) {
  const std::string type = j["type"].str();
  Normalizer n{NFC};
  if (type == "NFC")
    n.kind = NFC;
  else if (type == "NFKC")
    n.kind = NFKC;
  else if (type == "Prepend")
    n.kind = PREPEND, n.text = u32(j["prepend"].str());
  else if (type == "Replace")
    n.kind = REPLACE, n.pattern = Pattern::parse(j["pattern"]), n.text = u32(j["content"].str());
  else if (type == "Sequence") {
    n.kind = SEQUENCE;
    const Doc steps = j["normalizers"];
    for (size_t i = 0; i < steps.size(); ++i) n.steps.push_back(parse(steps[i]));
  } else {
    j["type"].fail(fmt::format("unsupported normalizer type '{}'", type));
  }
  return n;
}

void Normalizer::apply(std::u32string& s) const {
  switch (kind) {
    case NFC:
      s = unicode::nfc(s);
      break;
    case NFKC:
      s = unicode::nfkc(s);
      break;
    case PREPEND:
      if (!s.empty()) s = text + s;
      break;
    case REPLACE:
      s = replace_all(s, *pattern, text);
      break;
    case SEQUENCE:
      for (const auto& st : steps) st.apply(s);
      break;
  }
}

PreTokenizer PreTokenizer::parse(const Doc& j) {
  const std::string type = j["type"].str();
  PreTokenizer p{SPLIT};
  if (type == "Split") {
    p.pattern = Pattern::parse(j["pattern"]);
    p.behavior = parse_behavior(j["behavior"]);
    p.invert = j.bool_or("invert", false);
  } else if (type == "ByteLevel") {
    p.kind = BYTE_LEVEL;
    p.add_prefix_space = j.bool_or("add_prefix_space", true);  // the library's defaults
    if (j.bool_or("use_regex", true))
      p.pattern = Pattern{{}, Regex::compile(kGpt2Regex), "ByteLevel's built-in GPT-2 pattern"};
  } else if (type == "Metaspace") {
    p.kind = METASPACE;
    p.metaspace = MetaspaceOptions::parse(j);
    p.split = j.bool_or("split", true);
  } else if (type == "Digits") {
    p.kind = DIGITS;
    p.individual_digits = j.bool_or("individual_digits", false);
  } else if (type == "Sequence") {
    p.kind = SEQUENCE;
    const Doc steps = j["pretokenizers"];
    for (size_t i = 0; i < steps.size(); ++i) p.steps.push_back(parse(steps[i]));
  } else {
    j["type"].fail(fmt::format("unsupported pre_tokenizer type '{}'", type));
  }
  return p;
}

namespace {

// Metaspace: spaces become the replacement character, which is prepended by the scheme (always,
// or to the input's first piece); with `split`, pieces split before each replacement character.
void metaspace_pieces(std::vector<std::u32string>& pieces, const MetaspaceOptions& m, bool split,
                      bool at_start) {
  for (size_t i = 0; i < pieces.size(); ++i) {
    auto& p = pieces[i];
    std::replace(p.begin(), p.end(), U' ', m.replacement);
    const bool first = at_start && i == 0;
    if ((m.prepend == MetaspaceOptions::ALWAYS ||
         (m.prepend == MetaspaceOptions::FIRST && first)) &&
        (p.empty() || p[0] != m.replacement))
      p.insert(p.begin(), m.replacement);
  }
  if (split)
    split_pieces(pieces, PreTokenizer::MERGED_WITH_NEXT, [&](const std::u32string& s) {
      std::vector<std::pair<size_t, size_t>> at;
      for (size_t i = 0; i < s.size(); ++i)
        if (s[i] == m.replacement) at.emplace_back(i, i + 1);
      return segments(s.size(), at, false);
    });
}

}  // namespace

void PreTokenizer::apply(std::vector<std::u32string>& pieces, bool at_start) const {
  switch (kind) {
    case SPLIT:
      split_pieces(pieces, behavior, [&](const std::u32string& s) {
        return segments(s.size(), pattern->find_all(s), invert);
      });
      break;
    case BYTE_LEVEL: {
      if (add_prefix_space)
        for (auto& p : pieces)
          if (p.empty() || p[0] != ' ') p.insert(p.begin(), U' ');
      if (pattern)
        split_pieces(pieces, ISOLATED, [&](const std::u32string& s) {
          return segments(s.size(), pattern->find_all(s), false);
        });
      for (auto& p : pieces) {
        std::string bytes = unicode::encode_utf8(p);
        p.clear();
        for (unsigned char b : bytes) p.push_back(byte_to_char(b));
      }
      break;
    }
    case METASPACE:
      metaspace_pieces(pieces, metaspace, split, at_start);
      break;
    case DIGITS:
      // Digits (Rust's char::is_numeric: categories Nd, Nl, No) are matches, one each or runs
      // merged by Contiguous; other characters form runs between them.
      split_pieces(pieces, individual_digits ? ISOLATED : CONTIGUOUS, [&](const std::u32string& s) {
        std::vector<Segment> segs;
        for (size_t i = 0; i < s.size(); ++i) {
          const bool digit = unicode::is_number(s[i]);
          if (!digit && !segs.empty() && !segs.back().match)
            segs.back().e = i + 1;
          else
            segs.push_back({i, i + 1, digit});
        }
        return segs;
      });
      break;
    case SEQUENCE:
      for (const auto& st : steps) st.apply(pieces, at_start);
      break;
  }
}

}  // namespace kldq::io
