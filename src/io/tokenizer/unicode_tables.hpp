// Declarations of the generated Unicode tables (unicode_tables.cpp, made by
// scripts/gen_unicode_tables.py). Every table is sorted by code point.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kldq::io::unicode::tables {

struct CodeRange {
  uint32_t lo, hi;  // inclusive
};
struct CaseFold {
  uint32_t cp, fold;
};
struct CombiningClass {
  uint32_t lo, hi;
  uint8_t ccc;
};
struct Decomposition {
  uint32_t cp;
  uint32_t offset;  // into the pool
  uint32_t len;
};
struct Composition {
  uint32_t first, second, composite;  // sorted by (first, second)
};

extern const char* const kUnicodeVersion;
extern const CodeRange kLetter[];
extern const size_t kLetterSize;
extern const CodeRange kNumber[];
extern const size_t kNumberSize;
extern const CodeRange kSpace[];
extern const size_t kSpaceSize;
extern const CodeRange kWord[];
extern const size_t kWordSize;
extern const CaseFold kFold[];
extern const size_t kFoldSize;
extern const CombiningClass kCombining[];
extern const size_t kCombiningSize;
extern const uint32_t kCanonicalPool[];
extern const Decomposition kCanonical[];
extern const size_t kCanonicalSize;
extern const uint32_t kCompatPool[];
extern const Decomposition kCompat[];
extern const size_t kCompatSize;
extern const Composition kCompose[];
extern const size_t kComposeSize;

}  // namespace kldq::io::unicode::tables
