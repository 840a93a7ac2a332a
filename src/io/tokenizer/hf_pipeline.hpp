// The text stages of a Hugging Face tokenizer.json around the model: normalizers, pre-tokenizers
// and decoders, each parsed from its JSON object (unsupported types are errors naming the JSON
// path) and applied as the tokenizers library applies them.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kldq/io/document.hpp"
#include "kldq/io/tokenizer/regex.hpp"

namespace kldq::io {

// A "pattern": {"String": "..."} (literal) or {"Regex": "..."}.
struct Pattern {
  std::u32string literal;
  std::optional<Regex> regex;
  std::string where;  // "tokenizer.json: pre_tokenizer.pattern.Regex", for errors while matching
  static Pattern parse(const Doc& j);
  // Non-overlapping matches [begin, end) left to right.
  std::vector<std::pair<size_t, size_t>> find_all(std::u32string_view s) const;
};

// Metaspace's replacement character and prepend scheme (shared by the pre-tokenizer and the
// decoder of that name).
struct MetaspaceOptions {
  char32_t replacement = 0x2581;  // '▁'
  enum Prepend { ALWAYS, FIRST, NEVER } prepend = ALWAYS;
  static MetaspaceOptions parse(const Doc& j);
};

struct Normalizer {
  enum Kind { NFC, NFKC, PREPEND, REPLACE, SEQUENCE } kind;
  std::u32string text;  // PREPEND: prefix; REPLACE: replacement
  std::optional<Pattern> pattern;
  std::vector<Normalizer> steps;
  static Normalizer parse(const Doc& j);
  void apply(std::u32string& s) const;
};

struct PreTokenizer {
  enum Kind { SPLIT, BYTE_LEVEL, METASPACE, DIGITS, SEQUENCE } kind;
  enum Behavior { REMOVED, ISOLATED, MERGED_WITH_PREVIOUS, MERGED_WITH_NEXT, CONTIGUOUS };
  std::optional<Pattern> pattern;  // SPLIT (and BYTE_LEVEL with use_regex)
  Behavior behavior = ISOLATED;
  bool invert = false;
  bool add_prefix_space = false;   // BYTE_LEVEL
  MetaspaceOptions metaspace;      // METASPACE
  bool split = true;               // METASPACE
  bool individual_digits = false;  // DIGITS
  std::vector<PreTokenizer> steps;
  static PreTokenizer parse(const Doc& j);
  // Splits every piece in place; BYTE_LEVEL also maps bytes to its printable alphabet.
  // `at_start`: the pieces begin the input text (Metaspace prepend_scheme "first").
  void apply(std::vector<std::u32string>& pieces, bool at_start) const;
};

struct Decoder {
  enum Kind { BYTE_LEVEL, BYTE_FALLBACK, METASPACE, FUSE, STRIP, REPLACE, SEQUENCE } kind;
  std::u32string content;  // STRIP: the character; REPLACE: replacement
  std::optional<Pattern> pattern;
  size_t start = 0, stop = 0;  // STRIP
  MetaspaceOptions metaspace;  // METASPACE
  std::vector<Decoder> steps;
  static Decoder parse(const Doc& j);
  void apply(std::vector<std::u32string>& tokens) const;
};

// UTF-8 -> code points (the strings of tokenizer.json are valid UTF-8).
std::u32string u32(const std::string& s);
// `s` with every match of `p` replaced by `with`.
std::u32string replace_all(const std::u32string& s, const Pattern& p, const std::u32string& with);

// GPT-2's byte <-> printable character table used by ByteLevel.
char32_t byte_to_char(unsigned char b);
int char_to_byte(char32_t c);  // -1 when c is not in the table

}  // namespace kldq::io
