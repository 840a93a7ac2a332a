// UTF-8 decoding (Unicode Table 3-7 well-formedness, replacement of maximal subparts), property
// lookups by binary search over generated ranges, and NFC/NFKC (UAX #15: full decomposition,
// canonical ordering, canonical composition; Hangul syllables algorithmically).
#include "kldq/io/tokenizer/unicode.hpp"

#include <algorithm>

#include "unicode_tables.hpp"

namespace kldq::io::unicode {
namespace {

namespace t = tables;

constexpr char32_t kReplacement = 0xFFFD;

bool in_ranges(const t::CodeRange* r, size_t n, char32_t cp) {
  const t::CodeRange* end = r + n;
  const t::CodeRange* it =
      std::upper_bound(r, end, cp, [](char32_t c, const t::CodeRange& x) { return c < x.lo; });
  return it != r && cp <= (it - 1)->hi;
}

const t::Decomposition* find_decomposition(const t::Decomposition* d, size_t n, char32_t cp) {
  const t::Decomposition* end = d + n;
  const t::Decomposition* it =
      std::lower_bound(d, end, cp, [](const t::Decomposition& x, char32_t c) { return x.cp < c; });
  return it != end && it->cp == cp ? it : nullptr;
}

// Hangul syllable arithmetic (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

// Length of the well-formed sequence starting at s[i] (0 if the lead byte is invalid) and the
// decoded code point; `len` short of the expected length marks a maximal ill-formed subpart.
int decode_one(std::string_view s, size_t i, char32_t& cp, int& consumed) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    cp = b0;
    consumed = 1;
    return 1;
  }
  int need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF)
    need = 1, cp = b0 & 0x1F;
  else if (b0 == 0xE0)
    need = 2, lo = 0xA0, cp = b0 & 0x0F;
  else if (b0 >= 0xE1 && b0 <= 0xEC)
    need = 2, cp = b0 & 0x0F;
  else if (b0 == 0xED)
    need = 2, hi = 0x9F, cp = b0 & 0x0F;  // no surrogates
  else if (b0 >= 0xEE && b0 <= 0xEF)
    need = 2, cp = b0 & 0x0F;
  else if (b0 == 0xF0)
    need = 3, lo = 0x90, cp = b0 & 0x07;
  else if (b0 >= 0xF1 && b0 <= 0xF3)
    need = 3, cp = b0 & 0x07;
  else if (b0 == 0xF4)
    need = 3, hi = 0x8F, cp = b0 & 0x07;
  else {
    consumed = 1;
    return 0;
  }
  consumed = 1;
  for (int k = 0; k < need; ++k) {
    if (i + consumed >= s.size()) return 0;
    const auto b = static_cast<unsigned char>(s[i + consumed]);
    if (b < lo || b > hi) return 0;  // the bytes so far are one maximal subpart
    lo = 0x80, hi = 0xBF;
    cp = (cp << 6) | (b & 0x3F);
    ++consumed;
  }
  return consumed;
}

void decompose(std::u32string_view s, const t::Decomposition* table, size_t n, const uint32_t* pool,
               std::u32string& out) {
  for (char32_t cp : s) {
    if (cp >= kSBase && cp < kSBase + kSCount) {
      const int si = static_cast<int>(cp - kSBase);
      out.push_back(kLBase + si / kNCount);
      out.push_back(kVBase + (si % kNCount) / kTCount);
      if (si % kTCount) out.push_back(kTBase + si % kTCount);
      continue;
    }
    if (const t::Decomposition* d = find_decomposition(table, n, cp))
      out.append(pool + d->offset, pool + d->offset + d->len);
    else
      out.push_back(cp);
  }
}

// Canonical ordering: stable sort of each run of non-starters by combining class.
void reorder(std::u32string& s) {
  for (size_t i = 0; i < s.size();) {
    if (combining_class(s[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && combining_class(s[j]) != 0) ++j;
    std::stable_sort(
        s.begin() + static_cast<std::ptrdiff_t>(i), s.begin() + static_cast<std::ptrdiff_t>(j),
        [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
}

char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const t::Composition* end = t::kCompose + t::kComposeSize;
  const t::Composition* it =
      std::lower_bound(t::kCompose, end, std::pair{a, b},
                       [](const t::Composition& x, std::pair<char32_t, char32_t> k) {
                         return x.first != k.first ? x.first < k.first : x.second < k.second;
                       });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

// Canonical composition (UAX #15 sample algorithm).
void compose(std::u32string& s) {
  if (s.empty()) return;
  size_t starter = 0, out = 1;
  int last_class = combining_class(s[0]) ? 256 : 0;
  for (size_t i = 1; i < s.size(); ++i) {
    const char32_t ch = s[i];
    const int cls = combining_class(ch);
    const char32_t composite = compose_pair(s[starter], ch);
    if (composite && (last_class < cls || last_class == 0)) {
      s[starter] = composite;
      continue;
    }
    if (cls == 0) starter = out;
    last_class = cls;
    s[out++] = ch;
  }
  s.resize(out);
}

std::u32string normalize(std::u32string_view s, char32_t stable_below, bool compat) {
  // Text made only of code points below the first one any normalization touches is unchanged.
  if (std::all_of(s.begin(), s.end(), [&](char32_t c) { return c < stable_below; }))
    return std::u32string(s);
  std::u32string d;
  d.reserve(s.size() + 8);
  if (compat)
    decompose(s, t::kCompat, t::kCompatSize, t::kCompatPool, d);
  else
    decompose(s, t::kCanonical, t::kCanonicalSize, t::kCanonicalPool, d);
  reorder(d);
  compose(d);
  return d;
}

}  // namespace

const char* version() {
  return t::kUnicodeVersion;
}

std::u32string decode_utf8(std::string_view s, int64_t* first_invalid) {
  std::u32string out;
  out.reserve(s.size());
  if (first_invalid) *first_invalid = -1;
  for (size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    int consumed = 0;
    if (decode_one(s, i, cp, consumed) == 0) {
      if (first_invalid && *first_invalid < 0) *first_invalid = static_cast<int64_t>(i);
      cp = kReplacement;
    }
    out.push_back(cp);
    i += static_cast<size_t>(consumed);
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) append_utf8(out, c);
  return out;
}

std::string sanitize_utf8(std::string_view s, int64_t* first_invalid) {
  return encode_utf8(decode_utf8(s, first_invalid));
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(t::kLetter, t::kLetterSize, cp);
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(t::kNumber, t::kNumberSize, cp);
}

bool is_space(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x9 && cp <= 0xD);
  return in_ranges(t::kSpace, t::kSpaceSize, cp);
}

bool is_word(char32_t cp) {
  if (cp < 0x80) return is_letter(cp) || is_number(cp) || cp == '_';
  return in_ranges(t::kWord, t::kWordSize, cp);
}

char32_t simple_fold(char32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  const t::CaseFold* end = t::kFold + t::kFoldSize;
  const t::CaseFold* it = std::lower_bound(
      t::kFold, end, cp, [](const t::CaseFold& x, char32_t c) { return x.cp < c; });
  return it != end && it->cp == cp ? it->fold : cp;
}

uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const t::CombiningClass* end = t::kCombining + t::kCombiningSize;
  const t::CombiningClass* it = std::upper_bound(
      t::kCombining, end, cp, [](char32_t c, const t::CombiningClass& x) { return c < x.lo; });
  return it != t::kCombining && cp <= (it - 1)->hi ? (it - 1)->ccc : 0;
}

std::u32string nfc(std::u32string_view s) {
  return normalize(s, 0x300, false);
}
std::u32string nfkc(std::u32string_view s) {
  return normalize(s, 0xA0, true);
}

}  // namespace kldq::io::unicode
