// Decoders of tokenizer.json (ByteLevel, ByteFallback, Metaspace, Fuse, Strip, Replace,
// Sequence), applied to the token strings as the tokenizers library applies them: byte tokens
// become bytes, invalid UTF-8 becomes U+FFFD, and Metaspace drops the space it added.
#include <algorithm>

#include "hf_pipeline.hpp"
#include "kldq/io/tokenizer/unicode.hpp"

namespace kldq::io {

Decoder Decoder::parse(const Doc& j) {
  const std::string type = j["type"].str();
  Decoder d{FUSE};
  if (type == "ByteLevel")
    d.kind = BYTE_LEVEL;
  else if (type == "ByteFallback")
    d.kind = BYTE_FALLBACK;
  else if (type == "Fuse")
    d.kind = FUSE;
  else if (type == "Metaspace") {
    d.kind = METASPACE;
    d.metaspace = MetaspaceOptions::parse(j);
  } else if (type == "Strip") {
    d.kind = STRIP;
    d.content = u32(j["content"].str());
    if (d.content.size() != 1) j["content"].fail("expected a single character");
    d.start = static_cast<size_t>(j["start"].integer());
    d.stop = static_cast<size_t>(j["stop"].integer());
  } else if (type == "Replace") {
    d.kind = REPLACE;
    d.pattern = Pattern::parse(j["pattern"]);
    d.content = u32(j["content"].str());
  } else if (type == "Sequence") {
    d.kind = SEQUENCE;
    const Doc steps = j["decoders"];
    for (size_t i = 0; i < steps.size(); ++i) d.steps.push_back(parse(steps[i]));
  } else {
    j["type"].fail(fmt::format("unsupported decoder type '{}'", type));
  }
  return d;
}

namespace {

// ByteLevel: the GPT-2 byte alphabet back to bytes, decoded as UTF-8 (invalid sequences become
// U+FFFD, as from_utf8_lossy); tokens with characters outside the alphabet pass as UTF-8.
void byte_level(std::vector<std::u32string>& tokens) {
  std::string bytes;
  for (const auto& t : tokens) {
    const bool all =
        std::all_of(t.begin(), t.end(), [](char32_t c) { return char_to_byte(c) >= 0; });
    if (all)
      for (char32_t c : t) bytes.push_back(static_cast<char>(char_to_byte(c)));
    else
      bytes += unicode::encode_utf8(t);
  }
  tokens = {unicode::decode_utf8(bytes)};
}

// ByteFallback: runs of <0xHH> tokens joined into bytes and decoded; a run that is not valid
// UTF-8 becomes one U+FFFD per byte.
void byte_fallback(std::vector<std::u32string>& tokens) {
  std::vector<std::u32string> out;
  std::string pending;
  auto flush = [&] {
    if (pending.empty()) return;
    int64_t bad = -1;
    const std::u32string s = unicode::decode_utf8(pending, &bad);
    if (bad < 0)
      out.push_back(s);
    else
      for (size_t i = 0; i < pending.size(); ++i) out.push_back(U"\uFFFD");
    pending.clear();
  };
  auto hex = [](char32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
  };
  for (const auto& t : tokens) {
    if (t.size() == 6 && t.compare(0, 3, U"<0x") == 0 && t[5] == '>' && hex(t[3]) && hex(t[4])) {
      pending.push_back(
          static_cast<char>(std::stoi(unicode::encode_utf8(t.substr(3, 2)), nullptr, 16)));
    } else {
      flush();
      out.push_back(t);
    }
  }
  flush();
  tokens = std::move(out);
}

// Metaspace: the replacement character back to a space, except a first token's prepended one.
void metaspace_spaces(std::vector<std::u32string>& tokens, const MetaspaceOptions& m) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::u32string s;
    for (char32_t c : tokens[i]) {
      if (c != m.replacement)
        s.push_back(c);
      else if (!(i == 0 && m.prepend != MetaspaceOptions::NEVER))
        s.push_back(U' ');
    }
    tokens[i] = std::move(s);
  }
}

// Strip: at most `start` leading and `stop` trailing copies of `ch` off every token.
void strip(std::vector<std::u32string>& tokens, char32_t ch, size_t start, size_t stop) {
  for (auto& t : tokens) {
    size_t b = 0, e = t.size();
    while (b < start && b < e && t[b] == ch) ++b;
    size_t cut = 0;
    while (cut < stop && e > b && t[e - 1] == ch) --e, ++cut;
    t = t.substr(b, e - b);
  }
}

}  // namespace

void Decoder::apply(std::vector<std::u32string>& tokens) const {
  switch (kind) {
    case BYTE_LEVEL:
      byte_level(tokens);
      break;
    case BYTE_FALLBACK:
      byte_fallback(tokens);
      break;
    case METASPACE:
      metaspace_spaces(tokens, metaspace);
      break;
    case FUSE: {
      std::u32string all;
      for (const auto& t : tokens) all += t;
      tokens = {all};
      break;
    }
    case STRIP:
      strip(tokens, content[0], start, stop);
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
