// Unicode support for the tokenizers: UTF-8 decoding with Python's errors="replace" semantics,
// the character properties the pre-tokenizer regexes use (\p{L}, \p{N}, \s, case folding), and
// NFC/NFKC normalization (UAX #15) over generated tables (scripts/gen_unicode_tables.py):
// properties of Unicode 16.0, normalization as the tokenizers library does it (Unicode 9.0).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kldq::io::unicode {

// The Unicode version of the generated tables ("16.0.0").
const char* version();

// Decodes UTF-8. Each maximal ill-formed subsequence becomes one U+FFFD, as Python's
// bytes.decode("utf-8", "replace") does; `first_invalid` gets the byte offset of the first one
// (or -1).
std::u32string decode_utf8(std::string_view s, int64_t* first_invalid = nullptr);
void append_utf8(std::string& out, char32_t cp);
std::string encode_utf8(std::u32string_view cps);
// Valid UTF-8 for any input (invalid sequences replaced as decode_utf8 does).
std::string sanitize_utf8(std::string_view s, int64_t* first_invalid = nullptr);

bool is_letter(char32_t cp);  // general category L*
bool is_number(char32_t cp);  // general category N*
bool is_space(char32_t cp);   // Oniguruma's \s: U+0009-000D, U+0085, Z*
bool is_word(char32_t cp);    // Rust regex \w (L, M, Nd, Nl, Pc, ZWNJ, ZWJ)
char32_t simple_fold(char32_t cp);
uint8_t combining_class(char32_t cp);

std::u32string nfc(std::u32string_view s);
std::u32string nfkc(std::u32string_view s);

}  // namespace kldq::io::unicode
