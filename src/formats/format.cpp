// The formats traits table, format-name parsing and exact byte accounting.
#include "kldq/formats/format.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "kldq/core/error.hpp"

namespace kldq::formats {
namespace {

// Tolerances are the largest round-trip error as a fraction of the absolute maximum of the
// weight's quantization group (block, row): half the widest gap between neighbouring code values
// times the scale, plus a margin for the fp16 rounding of scales. FORMATS.md derives each one.
constexpr FormatTraits kFormats[] = {
    {Format::BF16, "bf16", 16, Blocking::NONE, 0, 0, 1.0 / 256},
    {Format::FP16, "fp16", 16, Blocking::NONE, 0, 0, 1.0 / 1024},
    {Format::FP8_E4M3, "fp8_e4m3", 8, Blocking::PER_CHANNEL, 0, 32, 1.0 / 16},
    {Format::FP8_E5M2, "fp8_e5m2", 8, Blocking::PER_CHANNEL, 0, 32, 1.0 / 8},
    {Format::FP8_E4M3_NOSCALE, "fp8_e4m3_noscale", 8, Blocking::NONE, 0, 0, 1.0 / 16},
    {Format::INT8, "int8", 8, Blocking::PER_CHANNEL, 0, 16, 0.0045},
    {Format::INT4, "int4", 4, Blocking::GROUP, 128, 16, 0.07},
    {Format::INT3, "int3", 3, Blocking::GROUP, 128, 16, 0.15},
    {Format::INT2, "int2", 2, Blocking::GROUP, 128, 16, 0.34},
    {Format::NF4, "nf4", 4, Blocking::FLAT_BLOCK, 64, 32, 0.16},
    {Format::FP4, "fp4", 4, Blocking::FLAT_BLOCK, 64, 32, 0.17},
};

int parse_number(std::string_view s, std::string_view text, std::string_view what) {
  int v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size())
    throw ConfigError(fmt::format("{}: '{}': bad number in '{}'", what, text, s));
  return v;
}

uint64_t div_up(uint64_t a, uint64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

bool int_grouped(Format f) {
  return f == Format::INT4 || f == Format::INT3 || f == Format::INT2;
}

const FormatTraits& traits(Format f) {
  for (const auto& row : kFormats)
    if (row.format == f) return row;
  throw InternalError("format missing from the traits table");
}

FormatSpec FormatSpec::parse(std::string_view text, std::string_view what) {
  std::vector<std::string_view> parts;
  for (size_t b = 0; b <= text.size();) {
    size_t e = text.find('_', b);
    if (e == std::string_view::npos) e = text.size();
    parts.push_back(text.substr(b, e - b));
    b = e + 1;
  }
  // The longest table name that is a prefix made of whole parts ("fp8_e4m3_noscale" before
  // "fp8_e4m3"); the remaining parts are options.
  const FormatTraits* row = nullptr;
  size_t used = 0;
  for (const auto& r : kFormats) {
    const std::string_view name = r.name;
    if (text.substr(0, name.size()) != name ||
        (text.size() > name.size() && text[name.size()] != '_'))
      continue;
    const size_t n = static_cast<size_t>(std::count(name.begin(), name.end(), '_')) + 1;
    if (!row || n > used) row = &r, used = n;
  }
  if (!row) {
    std::string names;
    for (const auto& r : kFormats) names += std::string(names.empty() ? "" : ", ") + r.name;
    throw ConfigError(fmt::format("{}: unknown format '{}' (one of: {})", what, text, names));
  }
  FormatSpec spec;
  spec.format = row->format;
  spec.group = row->default_group;
  for (size_t i = used; i < parts.size(); ++i) {
    const std::string_view p = parts[i];
    if (p == "asym" && int_grouped(spec.format))
      spec.asymmetric = true, spec.float_zero = false;
    else if (p == "fz" && int_grouped(spec.format))
      spec.asymmetric = spec.float_zero = true;
    else if (p == "sym" && int_grouped(spec.format))
      spec.asymmetric = spec.float_zero = false;
    else if (p.size() > 1 && p[0] == 'g' && int_grouped(spec.format))
      spec.group = parse_number(p.substr(1), text, what);
    else if (p.size() > 1 && p[0] == 'b' && row->blocking == Blocking::FLAT_BLOCK)
      spec.group = parse_number(p.substr(1), text, what);
    else if (p == "tensor" && row->blocking == Blocking::PER_CHANNEL && spec.format != Format::INT8)
      spec.per_tensor = true;
    else if (p == "dq" && row->blocking == Blocking::FLAT_BLOCK)
      throw UnsupportedError(
          fmt::format("{}: '{}': double quantization of absmax is not built yet", what, text));
    else
      throw ConfigError(
          fmt::format("{}: '{}': unknown option '{}' for {}", what, text, p, row->name));
  }
  if (int_grouped(spec.format) && spec.group != 32 && spec.group != 64 && spec.group != 128)
    throw ConfigError(fmt::format("{}: '{}': group size must be 32, 64 or 128", what, text));
  if (row->blocking == Blocking::FLAT_BLOCK &&
      (spec.group < 32 || spec.group > 4096 || (spec.group & (spec.group - 1)) != 0))
    throw ConfigError(
        fmt::format("{}: '{}': block size must be a power of two in [32, 4096]", what, text));
  return spec;
}

std::string FormatSpec::name() const {
  const FormatTraits& t = traits();
  std::string n = t.name;
  if (t.blocking == Blocking::GROUP)
    n += fmt::format("_g{}{}", group, float_zero ? "_fz" : asymmetric ? "_asym" : "");
  if (t.blocking == Blocking::FLAT_BLOCK && group != t.default_group)
    n += fmt::format("_b{}", group);
  if (per_tensor) n += "_tensor";
  return n;
}

uint64_t FormatSpec::bytes(int64_t out, int64_t in) const {
  const uint64_t o = static_cast<uint64_t>(out), i = static_cast<uint64_t>(in), n = o * i;
  const FormatTraits& t = traits();
  switch (t.blocking) {
    case Blocking::NONE:
      return n * static_cast<uint64_t>(t.code_bits) / 8;
    case Blocking::PER_CHANNEL:
      return n + (per_tensor ? 1 : o) * static_cast<uint64_t>(t.scale_bits) / 8;
    case Blocking::GROUP: {
      const uint64_t groups = o * div_up(i, static_cast<uint64_t>(group));
      const uint64_t codes = o * div_up(i * static_cast<uint64_t>(t.code_bits), 8);
      // fp16 scales; uint8 zero points (asym) or fp16 ones (fz)
      return codes + groups * 2 + (float_zero ? 2 * groups : asymmetric ? groups : 0);
    }
    case Blocking::FLAT_BLOCK:
      return div_up(n, 2) + div_up(n, static_cast<uint64_t>(group)) * 4;  // nibbles, fp32 absmax
  }
  return 0;
}

}  // namespace kldq::formats
