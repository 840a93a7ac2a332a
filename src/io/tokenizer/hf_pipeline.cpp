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

std::u32string u32(const std::string& s) { return unicode::decode_utf8(s); }

char32_t single_char(const JsonPath& j) {
  const std::u32string s = u32(j.str());
  if (s.size() != 1) j.fail("expected a single character");
  return s[0];
}

struct Segment {
  size_t b, e;
  bool match;
};

// Covers s with alternating gap/match segments (empty ones dropped).
std::vector<Segment> segments(size_t n, const std::vector<std::pair<size_t, size_t>>& m, bool invert) {
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
    case PreTokenizer::ISOLATED: return segs;
    case PreTokenizer::MERGED_WITH_PREVIOUS:
      for (const auto& s : segs) {
        if (s.match && !prev_match && !acc.empty()) acc.back().e = s.e;
        else acc.push_back(s);
        prev_match = s.match;
      }
      return acc;
    case PreTokenizer::MERGED_WITH_NEXT:
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !prev_match && !acc.empty()) acc.back().b = it->b;
        else acc.push_back(*it);
        prev_match = it->match;
      }
      std::reverse(acc.begin(), acc.end());
      return acc;
    case PreTokenizer::CONTIGUOUS:
      for (const auto& s : segs) {
        if (s.match == prev_match && !acc.empty()) acc.back().e = s.e;
        else acc.push_back(s);
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

PreTokenizer::Behavior parse_behavior(const JsonPath& j) {
  const std::string b = j.str();
  if (b == "Removed") return PreTokenizer::REMOVED;
  if (b == "Isolated") return PreTokenizer::ISOLATED;
  if (b == "MergedWithPrevious") return PreTokenizer::MERGED_WITH_PREVIOUS;
  if (b == "MergedWithNext") return PreTokenizer::MERGED_WITH_NEXT;
  if (b == "Contiguous") return PreTokenizer::CONTIGUOUS;
  j.fail(fmt::format("unknown split behavior '{}'", b));
}

}  // namespace

char32_t byte_to_char(unsigned char b) { return byte_table().to_char[b]; }

int char_to_byte(char32_t c) {
  static const auto inverse = [] {
    std::array<int, 324> inv{};
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[byte_table().to_char[b]] = b;
    return inv;
  }();
  return c < inverse.size() ? inverse[c] : -1;
}

Pattern Pattern::parse(const JsonPath& j) {
  Pattern p;
  if (j.has("String")) {
    p.literal = u32(j["String"].str());
    if (p.literal.empty()) j["String"].fail("empty pattern");
  } else if (j.has("Regex")) {
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
  while (pos <= s.size()) {
    if (regex) {
      auto m = regex->find(s, pos);
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

Normalizer Normalizer::parse(const JsonPath& j) {
  const std::string type = j["type"].str();
  Normalizer n{NFC};
  if (type == "NFC") n.kind = NFC;
  else if (type == "NFKC") n.kind = NFKC;
  else if (type == "Prepend") n.kind = PREPEND, n.text = u32(j["prepend"].str());
  else if (type == "Replace")
    n.kind = REPLACE, n.pattern = Pattern::parse(j["pattern"]), n.text = u32(j["content"].str());
  else if (type == "Sequence") {
    n.kind = SEQUENCE;
    const JsonPath steps = j["normalizers"];
    for (size_t i = 0; i < steps.size(); ++i) n.steps.push_back(parse(steps[i]));
  } else {
    j["type"].fail(fmt::format("unsupported normalizer type '{}'", type));
  }
  return n;
}

void Normalizer::apply(std::u32string& s) const {
  switch (kind) {
    case NFC: s = unicode::nfc(s); break;
    case NFKC: s = unicode::nfkc(s); break;
    case PREPEND:
      if (!s.empty()) s = text + s;
      break;
    case REPLACE: s = replace_all(s, *pattern, text); break;
    case SEQUENCE:
      for (const auto& st : steps) st.apply(s);
      break;
  }
}

PreTokenizer PreTokenizer::parse(const JsonPath& j) {
  const std::string type = j["type"].str();
  PreTokenizer p{SPLIT};
  if (type == "Split") {
    p.pattern = Pattern::parse(j["pattern"]);
    p.behavior = parse_behavior(j["behavior"]);
    p.invert = j.bool_or("invert", false);
  } else if (type == "ByteLevel") {
    p.kind = BYTE_LEVEL;
    p.add_prefix_space = j.bool_or("add_prefix_space", true);  // the library's defaults
    if (j.bool_or("use_regex", true)) p.pattern = Pattern{{}, Regex::compile(kGpt2Regex)};
  } else if (type == "Metaspace") {
    p.kind = METASPACE;
    p.replacement = j.has("replacement") ? single_char(j["replacement"]) : 0x2581;
    p.split = j.bool_or("split", true);
    const std::string scheme =
        j.str_or("prepend_scheme", j.bool_or("add_prefix_space", true) ? "always" : "never");
    if (scheme == "always") p.prepend = ALWAYS;
    else if (scheme == "first") p.prepend = FIRST;
    else if (scheme == "never") p.prepend = NEVER;
    else j["prepend_scheme"].fail(fmt::format("unknown prepend_scheme '{}'", scheme));
  } else if (type == "Digits") {
    p.kind = DIGITS;
    p.individual_digits = j.bool_or("individual_digits", false);
  } else if (type == "Sequence") {
    p.kind = SEQUENCE;
    const JsonPath steps = j["pretokenizers"];
    for (size_t i = 0; i < steps.size(); ++i) p.steps.push_back(parse(steps[i]));
  } else {
    j["type"].fail(fmt::format("unsupported pre_tokenizer type '{}'", type));
  }
  return p;
}

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
      for (size_t i = 0; i < pieces.size(); ++i) {
        auto& p = pieces[i];
        std::replace(p.begin(), p.end(), U' ', replacement);
        const bool first = at_start && i == 0;
        if ((prepend == ALWAYS || (prepend == FIRST && first)) && (p.empty() || p[0] != replacement))
          p.insert(p.begin(), replacement);
      }
      if (split)
        split_pieces(pieces, MERGED_WITH_NEXT, [&](const std::u32string& s) {
          std::vector<std::pair<size_t, size_t>> m;
          for (size_t i = 0; i < s.size(); ++i)
            if (s[i] == replacement) m.emplace_back(i, i + 1);
          return segments(s.size(), m, false);
        });
      break;
    case DIGITS:
      split_pieces(pieces, individual_digits ? ISOLATED : CONTIGUOUS, [&](const std::u32string& s) {
        std::vector<Segment> segs;
        for (size_t i = 0; i < s.size(); ++i) segs.push_back({i, i + 1, s[i] >= '0' && s[i] <= '9'});
        return segs;
      });
      break;
    case SEQUENCE:
      for (const auto& st : steps) st.apply(pieces, at_start);
      break;
  }
}

Decoder Decoder::parse(const JsonPath& j) {
  const std::string type = j["type"].str();
  Decoder d{FUSE};
  if (type == "ByteLevel") d.kind = BYTE_LEVEL;
  else if (type == "ByteFallback") d.kind = BYTE_FALLBACK;
  else if (type == "Fuse") d.kind = FUSE;
  else if (type == "Metaspace") {
    d.kind = METASPACE;
    d.replacement = j.has("replacement") ? single_char(j["replacement"]) : 0x2581;
    const std::string scheme =
        j.str_or("prepend_scheme", j.bool_or("add_prefix_space", true) ? "always" : "never");
    d.prepend = scheme != "never";
  } else if (type == "Strip") {
    d.kind = STRIP;
    d.content = std::u32string(1, single_char(j["content"]));
    d.start = static_cast<size_t>(j["start"].integer());
    d.stop = static_cast<size_t>(j["stop"].integer());
  } else if (type == "Replace") {
    d.kind = REPLACE;
    d.pattern = Pattern::parse(j["pattern"]);
    d.content = u32(j["content"].str());
  } else if (type == "Sequence") {
    d.kind = SEQUENCE;
    const JsonPath steps = j["decoders"];
    for (size_t i = 0; i < steps.size(); ++i) d.steps.push_back(parse(steps[i]));
  } else {
    j["type"].fail(fmt::format("unsupported decoder type '{}'", type));
  }
  return d;
}

void Decoder::apply(std::vector<std::u32string>& tokens) const {
  switch (kind) {
    case BYTE_LEVEL: {
      std::string bytes;
      for (const auto& t : tokens) {
        const bool all = std::all_of(t.begin(), t.end(), [](char32_t c) { return char_to_byte(c) >= 0; });
        if (all) for (char32_t c : t) bytes.push_back(static_cast<char>(char_to_byte(c)));
        else bytes += unicode::encode_utf8(t);
      }
      tokens = {unicode::decode_utf8(bytes)};  // invalid UTF-8 becomes U+FFFD, as from_utf8_lossy
      break;
    }
    case BYTE_FALLBACK: {
      std::vector<std::u32string> out;
      std::string pending;
      auto flush = [&] {
        if (pending.empty()) return;
        int64_t bad = -1;
        const std::u32string s = unicode::decode_utf8(pending, &bad);
        if (bad < 0) out.push_back(s);
        else for (size_t i = 0; i < pending.size(); ++i) out.push_back(U"\uFFFD");
        pending.clear();
      };
      for (const auto& t : tokens) {
        auto hex = [](char32_t c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
        if (t.size() == 6 && t.compare(0, 3, U"<0x") == 0 && t[5] == '>' && hex(t[3]) && hex(t[4])) {
          pending.push_back(static_cast<char>(std::stoi(unicode::encode_utf8(t.substr(3, 2)), nullptr, 16)));
        } else {
          flush();
          out.push_back(t);
        }
      }
      flush();
      tokens = std::move(out);
      break;
    }
    case METASPACE:
      for (size_t i = 0; i < tokens.size(); ++i) {
        std::u32string s;
        for (char32_t c : tokens[i]) {
          if (c != replacement) s.push_back(c);
          else if (!(i == 0 && prepend)) s.push_back(U' ');
        }
        tokens[i] = std::move(s);
      }
      break;
    case FUSE: {
      std::u32string all;
      for (const auto& t : tokens) all += t;
      tokens = {all};
      break;
    }
    case STRIP:
      for (auto& t : tokens) {
        size_t b = 0, e = t.size();
        while (b < start && b < e && t[b] == content[0]) ++b;
        size_t cut = 0;
        while (cut < stop && e > b && t[e - 1] == content[0]) --e, ++cut;
        t = t.substr(b, e - b);
      }
      break;
    case REPLACE:
      for (auto& t : tokens) t = replace_all(t, *pattern, content);
      break;
    case SEQUENCE:
      for (const auto& st : steps) st.apply(tokens);
      break;
  }
}

}  // namespace kldq::io
