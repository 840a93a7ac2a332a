// Weight storage formats: one traits table (kFormats) and a parsed FormatSpec naming a format
// with its parameters ("nf4", "nf4_b128", "int4_g128", "int4_g64_asym", "fp8_e4m3",
// "fp8_e4m3_tensor", "fp8_e4m3_noscale", "int8", "bf16"). docs/FORMATS.md documents every layout.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kldq::formats {

enum class Format {
  BF16,
  FP16,
  FP8_E4M3,
  FP8_E5M2,
  FP8_E4M3_NOSCALE,
  INT8,
  INT4,
  INT3,
  INT2,
  NF4,
  FP4
};

enum class Blocking {
  NONE,         // dense, or one plain cast
  PER_CHANNEL,  // one scale per output row (per tensor optional for fp8)
  GROUP,        // groups of `group` input columns per row (last group may be partial)
  FLAT_BLOCK,   // blocks of `group` elements over the row-major flattened weight (bitsandbytes)
};

struct FormatTraits {
  Format format;
  const char* name;  // lowercase I/O spelling
  int code_bits;     // bits per stored weight code
  Blocking blocking;
  int default_group;  // group or block size (0: none)
  int scale_bits;     // bits per scale (fp16 scales: 16, fp32 absmax: 32)
  double tolerance;   // round-trip bound on |w - dequant(quant(w))| / step (see FORMATS.md)
};

// The traits table, one row per Format.
const FormatTraits& traits(Format f);
// int4, int3, int2: grouped integer codes with group, asymmetric and float-zero variants.
bool int_grouped(Format f);

struct FormatSpec {
  Format format = Format::BF16;
  int group = 0;            // group (int) or block (nf4/fp4) size; 0 when not grouped
  bool asymmetric = false;  // int formats: zero point per group
  bool float_zero = false;  // int formats, `_fz`: asymmetric with fp16 zero points (HQQ)
  bool per_tensor = false;  // fp8: one scale for the whole weight

  // Parses a format name with optional suffixes (_g32/_g64/_g128, _asym, _fz, _b64..._b4096,
  // _tensor); ConfigError naming `what` for anything else.
  static FormatSpec parse(std::string_view text, std::string_view what = "format");
  std::string name() const;
  bool operator==(const FormatSpec&) const = default;
  const FormatTraits& traits() const { return formats::traits(format); }
  // bf16 or fp16: stored as a plain weight, no codes.
  bool dense() const { return format == Format::BF16 || format == Format::FP16; }
  // Exact storage of an [out, in] weight: codes + scales + zero points, in bytes.
  uint64_t bytes(int64_t out, int64_t in) const;
  double bits_per_weight(int64_t out, int64_t in) const {
    return 8.0 * static_cast<double>(bytes(out, in)) / static_cast<double>(out * in);
  }
};

}  // namespace kldq::formats
