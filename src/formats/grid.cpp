// Quantization grids: per-group parameters fixed apart from the weights they round, the values
// of a column on them, and packing with given parameters. The arithmetic is quantize_rtn's
// (src/formats/quantize.cpp), step for step, so that make_grid + pack_on_grid reproduces it bit
// for bit:
//   int2/3/4 symmetric:  scale = fp16(absmax / (2^(b-1) - 1/2)), zero = 2^(b-1)
//            asymmetric: scale = fp16((max(w, 0) - min(w, 0)) / (2^b - 1)), zero = round(-lo/scale)
//            value = (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero) * scale
//   int8:    scale = fp16(absmax / 127), value = clamp(round(w / scale), -127, 127) * scale
//   fp8:     scale = absmax / format max (1 for an all-zero row), value = fp8(w / scale) * scale
//   nf4/fp4: scale = absmax, value = table[nearest code of w * (1 / absmax)] * absmax
// A zero scale (all-zero group) divides by 1 instead; its values are 0.
#include "kldq/formats/grid.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "kldq/core/error.hpp"

namespace kldq::formats {
namespace {

// x in fp8, saturated at the format's largest value: PyTorch's cast gives NaN (e4m3fn) or inf
// (e5m2) beyond it. RTN never gets there (the scale is the row's absmax / max), but GPTQ's
// error updates can carry a column past its row's original maximum.
at::Tensor fp8_codes(const at::Tensor& x, Format f) {
  return x.clamp(-fp8_max(f), fp8_max(f)).to(fp8_type(f));
}

at::Tensor nonzero_or_one(const at::Tensor& s) {
  return at::where(s > 0, s, at::ones_like(s));
}

// Integer codes of w: [out, k] with per-row scale, zero: [out, 1] (nf4/fp4: the table index).
at::Tensor codes_of(const at::Tensor& w, const FormatSpec& spec, const at::Tensor& scale,
                    const at::Tensor& zero) {
  const int bits = spec.traits().code_bits;
  switch (spec.format) {
    case Format::INT8:
      return at::round(w / nonzero_or_one(scale)).clamp(-127, 127);
    case Format::NF4:
    case Format::FP4: {
      const at::Tensor x = (w * scale.clamp_min(1e-38f).reciprocal()).clamp(-1.0, 1.0);
      return nearest_codes_4bit(x, spec.format);
    }
    case Format::INT4:
    case Format::INT3:
    case Format::INT2:
    case Format::BF16:  // no grid: make_grid refuses them (check_grid)
    case Format::FP16:
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
    case Format::FP8_E4M3_NOSCALE:
      return (at::round(w / nonzero_or_one(scale)) + zero).clamp(0, std::ldexp(1.0, bits) - 1);
  }
  throw InternalError("codes_of: not a format");
}

void check_grid(const FormatSpec& spec, int64_t in) {
  if (!has_grid(spec, in))
    throw UnsupportedError(fmt::format(
        "format {} has no quantization grid for {} input columns (calibrated methods need int2/3/4 "
        "without _fz,"
        " int8, per-channel fp8, or nf4/fp4 with the input size a multiple of the block)",
        spec.name(), in));
}

}  // namespace

float fp8_max(Format f) {
  return f == Format::FP8_E5M2 ? 57344.f : 448.f;
}

at::ScalarType fp8_type(Format f) {
  return f == Format::FP8_E5M2 ? at::kFloat8_e5m2 : at::kFloat8_e4m3fn;
}

bool has_grid(const FormatSpec& spec, int64_t in) {
  switch (spec.format) {
    case Format::INT2:
    case Format::INT3:
    case Format::INT4:
      return !spec.float_zero;  // fz: HQQ's own, no round-to-nearest grid
    case Format::INT8:
      return true;
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
      return !spec.per_tensor;
    case Format::NF4:
    case Format::FP4:
      return in % spec.group == 0;
    case Format::BF16:
    case Format::FP16:
    case Format::FP8_E4M3_NOSCALE:
      return false;
  }
  throw InternalError("has_grid: not a format");
}

int64_t grid_group(const FormatSpec& spec, int64_t in) {
  return int_grouped(spec.format) || spec.traits().blocking == Blocking::FLAT_BLOCK
             ? std::min<int64_t>(spec.group, in)
             : in;
}

void group_params(const at::Tensor& w, const FormatSpec& spec, at::Tensor& scale,
                  at::Tensor& zero) {
  const int bits = spec.traits().code_bits;
  zero = at::Tensor();
  switch (spec.format) {
    case Format::INT2:
    case Format::INT3:
    case Format::INT4:
      if (!spec.asymmetric) {
        const double qmax = std::ldexp(1.0, bits - 1) - 0.5;
        scale = ieee_div(w.abs().amax(1), qmax).to(at::kHalf).to(at::kFloat);
        zero = at::full_like(scale, std::ldexp(1.0, bits - 1));
      } else {
        const at::Tensor lo = w.amin(1).clamp_max(0), hi = w.amax(1).clamp_min(0);
        scale = ieee_div(hi - lo, std::ldexp(1.0, bits) - 1).to(at::kHalf).to(at::kFloat);
        zero = at::round(-lo / nonzero_or_one(scale)).clamp(0, std::ldexp(1.0, bits) - 1);
      }
      return;
    case Format::INT8:
      scale = ieee_div(w.abs().amax(1), 127.0).to(at::kHalf).to(at::kFloat);
      return;
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
      scale = nonzero_or_one(ieee_div(w.abs().amax(1), fp8_max(spec.format)));
      return;
    case Format::NF4:
    case Format::FP4:
      scale = w.abs().amax(1);
      return;
    case Format::BF16:
    case Format::FP16:
    case Format::FP8_E4M3_NOSCALE:
      check_grid(spec, w.size(1));
  }
}

Grid make_grid(const at::Tensor& w_in, const FormatSpec& spec) {
  check(w_in.dim() == 2, "make_grid: weight must be [out, in]");
  const at::Tensor w = w_in.to(at::kFloat);
  Grid g;
  g.spec = spec;
  g.out = w.size(0);
  g.in = w.size(1);
  check_grid(spec, g.in);
  g.group = grid_group(spec, g.in);
  std::vector<at::Tensor> scales, zeros;
  for (int64_t c = 0; c < g.in; c += g.group) {
    at::Tensor s, z;
    group_params(w.narrow(1, c, std::min(g.group, g.in - c)), spec, s, z);
    scales.push_back(s);
    if (z.defined()) zeros.push_back(z);
  }
  g.scale = at::stack(scales, 1);  // [out, groups]
  if (!zeros.empty()) g.zero = at::stack(zeros, 1);
  return g;
}

at::Tensor round_to_grid(const at::Tensor& w, const FormatSpec& spec, const at::Tensor& scale_in,
                         const at::Tensor& zero_in) {
  const at::Tensor scale = scale_in.unsqueeze(1);  // [out, 1]
  const at::Tensor zero = zero_in.defined() ? zero_in.unsqueeze(1) : at::Tensor();
  switch (spec.format) {
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
      return fp8_codes(w / scale, spec.format).to(at::kFloat) * scale;
    case Format::NF4:
    case Format::FP4:
      return code_search_4bit(spec.format, w.device())
                 .values.index({codes_of(w, spec, scale, zero)}) *
             scale;
    case Format::INT8:
      return codes_of(w, spec, scale, zero) * scale;
    case Format::INT4:
    case Format::INT3:
    case Format::INT2:
    case Format::BF16:  // no grid: never made (check_grid)
    case Format::FP16:
    case Format::FP8_E4M3_NOSCALE:
      return (codes_of(w, spec, scale, zero) - zero) * scale;
  }
  throw InternalError("round_to_grid: not a format");
}

GroupRounder::GroupRounder(const FormatSpec& spec, at::Tensor scale, at::Tensor zero)
    : spec_(spec), scale_(std::move(scale)), zero_(std::move(zero)) {
  int_ = int_grouped(spec.format);
  safe_ = nonzero_or_one(scale_);
  max_code_ = std::ldexp(1.0, spec.traits().code_bits) - 1;
}

at::Tensor GroupRounder::operator()(const at::Tensor& w) const {
  if (!int_) return round_to_grid(w.unsqueeze(1), spec_, scale_, zero_).squeeze(1);
  // (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero) * scale, as codes_of and round_to_grid.
  return (w / safe_).round_().add_(zero_).clamp_(0, max_code_).sub_(zero_).mul_(scale_);
}

at::Tensor fake_quantize(const at::Tensor& w_in, const Grid& g) {
  const at::Tensor w = w_in.to(at::kFloat);
  at::Tensor out = at::empty_like(w);  // [out, in] fp32
  for (int64_t k = 0, c = 0; c < g.in; ++k, c += g.group) {
    const int64_t n = std::min(g.group, g.in - c);
    out.narrow(1, c, n).copy_(round_to_grid(w.narrow(1, c, n), g.spec, g.scale.select(1, k),
                                            g.zero.defined() ? g.zero.select(1, k) : at::Tensor()));
  }
  return out;
}

PackedWeight pack_on_grid(const at::Tensor& w_in, const Grid& g) {
  check(w_in.dim() == 2 && w_in.size(0) == g.out && w_in.size(1) == g.in,
        "pack_on_grid: weight shape differs from the grid's");
  const at::Tensor w = w_in.to(at::kFloat);
  PackedWeight p;
  p.spec = g.spec;
  p.out = g.out;
  p.in = g.in;
  const int bits = g.spec.traits().code_bits;
  if (g.spec.format == Format::FP8_E4M3 || g.spec.format == Format::FP8_E5M2) {
    p.codes = fp8_codes(w / g.scale, g.spec.format);  // scale [out, 1]: one group per row
    p.scales = g.scale.reshape({g.out}).contiguous();
    return p;
  }
  std::vector<at::Tensor> codes;
  for (int64_t k = 0, c = 0; c < g.in; ++k, c += g.group) {
    const int64_t n = std::min(g.group, g.in - c);
    codes.push_back(codes_of(w.narrow(1, c, n), g.spec, g.scale.narrow(1, k, 1),
                             g.zero.defined() ? g.zero.narrow(1, k, 1) : at::Tensor()));
  }
  const at::Tensor q = at::cat(codes, 1);  // [out, in] codes
  switch (g.spec.format) {
    case Format::INT8:
      p.codes = q.to(at::kChar);
      p.scales = g.scale.reshape({g.out}).to(at::kHalf);
      break;
    case Format::NF4:
    case Format::FP4:
      // Blocks lie within rows (in % block == 0), so [out, blocks per row] is the flat order.
      p.codes = pack_nibbles(q.to(at::kByte).reshape(-1));
      p.scales = g.scale.reshape(-1).contiguous();
      break;
    case Format::INT4:
    case Format::INT3:
    case Format::INT2:
    case Format::BF16:  // no grid: never made (check_grid)
    case Format::FP16:
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
    case Format::FP8_E4M3_NOSCALE:
      p.codes = pack_bits(q.to(at::kByte), bits);
      p.scales = g.scale.to(at::kHalf).contiguous();
      if (g.spec.asymmetric) p.zeros = g.zero.to(at::kByte).contiguous();
  }
  return p;
}

}  // namespace kldq::formats
