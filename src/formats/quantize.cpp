// Round-to-nearest quantizers and the CPU reference dequantizer of every format, in fp32.
//
//   int2/3/4 (group g along the input dimension, last group partial):
//     symmetric:  scale = fp16(absmax / (2^(b-1) - 1/2)), q = clamp(round(w / scale), -2^(b-1),
//                 2^(b-1) - 1), stored code = q + 2^(b-1)  (GPTQ's symmetric grid: zero 2^(b-1))
//     asymmetric: lo = min(w, 0), hi = max(w, 0) (zero stays exact), scale = fp16((hi - lo) /
//                 (2^b - 1)), zero = clamp(round(-lo / scale), 0, 2^b - 1), code = clamp(
//                 round(w / scale) + zero, 0, 2^b - 1)
//     dequant:    (code - zero) * scale
//   int8: per row, scale = fp16(absmax / 127), code = clamp(round(w / scale), -127, 127)
//   fp8:  per row (or tensor), scale = fp32(absmax / fp8 max), code = fp8(w / scale)
//   nf4/fp4: bitsandbytes' quantize_4bit (see quantize_4bit below)
// round() is round-half-to-even (torch.round). Scales of all-zero groups are 0; their codes
// decode to 0.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "kldq/core/error.hpp"
#include "kldq/formats/code_tables.hpp"
#include "kldq/formats/grid.hpp"
#include "kldq/formats/packed.hpp"

namespace kldq::formats {

// The code is the table entry whose interval between midpoints holds x (x on a midpoint takes the
// lower, as std::lower_bound / searchsorted(side=left)).
CodeSearch code_search_4bit(Format f, c10::Device device) {
  const std::array<float, 16>& code = code_table_4bit(f);
  std::array<int64_t, 16> order{};
  for (int i = 0; i < 16; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return code[a] < code[b]; });
  std::array<float, 15> mid{};
  for (int i = 0; i < 15; ++i) mid[i] = (code[order[i]] + code[order[i + 1]]) / 2;
  return {at::tensor(std::vector<float>(mid.begin(), mid.end())).to(device),
          at::tensor(std::vector<int64_t>(order.begin(), order.end())).to(device),
          at::tensor(std::vector<float>(code.begin(), code.end())).to(device)};
}

at::Tensor CodeSearch::codes(const at::Tensor& x) const {
  return lut.index({at::searchsorted(mids, x)});
}

at::Tensor nearest_codes_4bit(const at::Tensor& x, Format f) {
  return code_search_4bit(f, x.device()).codes(x);
}

const std::array<float, 16>& code_table_4bit(Format f) {
  return f == Format::NF4 ? kNF4Codes : kFP4Codes;
}

at::Tensor pack_nibbles(const at::Tensor& codes) {
  const at::Tensor pairs = codes.view({-1, 2});
  return pairs.select(1, 0).bitwise_left_shift(4).bitwise_or_(pairs.select(1, 1));
}

at::Tensor ieee_div(const at::Tensor& a, double b) {
  return a / at::full({}, b, a.options());
}

namespace {

// bitsandbytes' quantize_4bit: blocks of B over the flattened weight; absmax per block (fp32);
// x = w * (1 / absmax) (the last partial block divides instead), clamped to [-1, 1], coded by
// nearest_codes; two codes per byte, the first element in the high nibble:
//     byte k = [ code(2k) : 4 | code(2k+1) : 4 ]      (an odd count pads the code of 0.0)
// Tensor operations only, so it runs on the weight's device; every step is one IEEE fp32
// operation, so CPU and CUDA give the same codes.
PackedWeight quantize_4bit(const at::Tensor& w, PackedWeight p) {
  const auto f32 = w.options().dtype(at::kFloat);
  const at::Tensor flat = w.reshape(-1);
  const int64_t n = flat.numel(), B = p.spec.group, blocks = (n + B - 1) / B;
  at::Tensor x = at::zeros({blocks * B}, f32);  // [blocks * B], zero padded
  x.narrow(0, 0, n).copy_(flat);
  x = x.view({blocks, B});
  const at::Tensor absmax = x.abs().amax(1);        // [blocks]
  const at::Tensor am = absmax.clamp_min(1e-38f);   // all-zero blocks: codes of 0
  at::Tensor s = x * am.reciprocal().unsqueeze(1);  // [blocks, B]
  if (n % B) s[blocks - 1] = x[blocks - 1] / am[blocks - 1];
  s = s.clamp_(-1.0, 1.0).view(-1).narrow(0, 0, n);
  at::Tensor q = nearest_codes_4bit(s, p.spec.format).to(at::kByte);  // [n] codes
  if (n % 2) q = at::cat({q, nearest_codes_4bit(at::zeros({1}, f32), p.spec.format).to(at::kByte)});
  p.codes = pack_nibbles(q);
  p.scales = absmax;
  return p;
}

at::Tensor dequantize_4bit(const PackedWeight& p) {
  const std::array<float, 16>& code = code_table_4bit(p.spec.format);
  const int64_t n = p.out * p.in, B = p.spec.group;
  at::Tensor out = at::empty({n}, at::kFloat);
  const uint8_t* c = p.codes.data_ptr<uint8_t>();
  const float* absmax = p.scales.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int q = i % 2 == 0 ? c[i / 2] >> 4 : c[i / 2] & 0xF;
    o[i] = code[q] * absmax[i / B];
  }
  return out.view({p.out, p.in});
}

// Groups of g columns: [out, in] -> per-group reductions [out, groups] (last group partial).
at::Tensor group_reduce(const at::Tensor& w, int64_t g, bool max_abs, bool take_min) {
  const int64_t in = w.size(1), groups = (in + g - 1) / g;
  std::vector<at::Tensor> parts;
  for (int64_t k = 0; k < groups; ++k) {
    const at::Tensor s = w.narrow(1, k * g, std::min(g, in - k * g));
    parts.push_back(max_abs ? s.abs().amax(1) : take_min ? s.amin(1) : s.amax(1));
  }
  return at::stack(parts, 1);  // [out, groups]
}

// Expands per-group values [out, groups] to [out, in].
at::Tensor per_column(const at::Tensor& v, int64_t g, int64_t in) {
  return v.repeat_interleave(g, 1).narrow(1, 0, in);
}

PackedWeight quantize_int(const at::Tensor& w, PackedWeight p) {
  const int bits = p.spec.traits().code_bits;
  const int64_t g = p.spec.group;
  at::Tensor scale, zero;  // [out, groups] fp32 (scale already rounded to fp16)
  if (!p.spec.asymmetric) {
    const double qmax = std::ldexp(1.0, bits - 1) - 0.5;
    scale = ieee_div(group_reduce(w, g, true, false), qmax).to(at::kHalf).to(at::kFloat);
    zero = at::full_like(scale, std::ldexp(1.0, bits - 1));
  } else {
    const at::Tensor lo = group_reduce(w, g, false, true).clamp_max(0);
    const at::Tensor hi = group_reduce(w, g, false, false).clamp_min(0);
    scale = ieee_div(hi - lo, std::ldexp(1.0, bits) - 1).to(at::kHalf).to(at::kFloat);
    const at::Tensor safe = at::where(scale > 0, scale, at::ones_like(scale));
    zero = at::round(-lo / safe).clamp(0, std::ldexp(1.0, bits) - 1);
    p.zeros = zero.to(at::kByte);
  }
  const at::Tensor s = per_column(at::where(scale > 0, scale, at::ones_like(scale)), g, p.in);
  const at::Tensor q =
      (at::round(w / s) + per_column(zero, g, p.in)).clamp(0, std::ldexp(1.0, bits) - 1);
  p.codes = pack_bits(q.to(at::kByte), bits);
  p.scales = scale.to(at::kHalf);
  return p;
}

at::Tensor dequantize_int(const PackedWeight& p) {
  const int bits = p.spec.traits().code_bits;
  const int64_t g = p.spec.group;
  const at::Tensor q = unpack_bits(p.codes, bits, p.in).to(at::kFloat);
  const at::Tensor zero = p.spec.asymmetric
                              ? p.zeros.to(at::kFloat)
                              : at::full_like(p.scales, std::ldexp(1.0, bits - 1), at::kFloat);
  return (q - per_column(zero, g, p.in)) * per_column(p.scales.to(at::kFloat), g, p.in);
}

}  // namespace

uint64_t PackedWeight::bytes() const {
  uint64_t n = codes.nbytes();
  if (scales.defined()) n += scales.nbytes();
  if (zeros.defined()) n += zeros.nbytes();
  return n;
}

PackedWeight quantize_rtn(const at::Tensor& w_in, const FormatSpec& spec) {
  check(w_in.dim() == 2, "quantize_rtn: weight must be [out, in]");
  const at::Tensor w = w_in.to(at::kFloat).contiguous();  // [out, in] fp32, on w_in's device
  PackedWeight p;
  p.spec = spec;
  p.out = w.size(0);
  p.in = w.size(1);
  switch (spec.format) {
    case Format::BF16:
      p.codes = w.to(at::kBFloat16);
      break;
    case Format::FP16:
      p.codes = w.to(at::kHalf);
      break;
    case Format::FP8_E4M3_NOSCALE:
      p.codes = w.to(at::kFloat8_e4m3fn);
      break;
    case Format::FP8_E4M3:
    case Format::FP8_E5M2: {
      at::Tensor absmax = spec.per_tensor ? w.abs().amax().reshape({1}) : w.abs().amax(1);
      at::Tensor scale = ieee_div(absmax, fp8_max(spec.format));
      scale = at::where(scale > 0, scale, at::ones_like(scale));
      p.codes = (w / (spec.per_tensor ? scale : scale.unsqueeze(1))).to(fp8_type(spec.format));
      p.scales = scale;
      break;
    }
    case Format::INT8: {
      const at::Tensor scale = ieee_div(w.abs().amax(1), 127.0).to(at::kHalf).to(at::kFloat);
      const at::Tensor safe = at::where(scale > 0, scale, at::ones_like(scale));
      p.codes = at::round(w / safe.unsqueeze(1)).clamp(-127, 127).to(at::kChar);
      p.scales = scale.to(at::kHalf);
      break;
    }
    case Format::INT4:
    case Format::INT3:
    case Format::INT2:
      if (spec.float_zero)  // its zero points are fitted: quant::quantize_hqq makes them
        throw UnsupportedError(
            fmt::format("format {} holds HQQ's fitted zero points: quantize it with --method hqq",
                        spec.name()));
      return quantize_int(w, p);
    case Format::NF4:
    case Format::FP4:
      return quantize_4bit(w, p);
  }
  return p;
}

at::Tensor dequantize(const PackedWeight& p) {
  if (!p.codes.is_cpu()) return dequantize(p.to(at::kCPU));  // the reference runs on the CPU
  switch (p.spec.format) {
    case Format::BF16:
    case Format::FP16:
    case Format::FP8_E4M3_NOSCALE:
      return p.codes.to(at::kFloat);
    case Format::INT8:
      return p.codes.to(at::kFloat) * p.scales.to(at::kFloat).unsqueeze(1);
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
      return p.codes.to(at::kFloat) * (p.spec.per_tensor ? p.scales : p.scales.unsqueeze(1));
    case Format::INT4:
    case Format::INT3:
    case Format::INT2:
      return dequantize_int(p);
    case Format::NF4:
    case Format::FP4:
      return dequantize_4bit(p);
  }
  throw InternalError("dequantize: unknown format");
}

WeightError weight_error(const at::Tensor& w_in, const PackedWeight& p) {
  const at::Tensor w = w_in.to(at::kCPU, at::kDouble);
  const at::Tensor d = dequantize(p).to(at::kDouble) - w;
  WeightError e;
  e.mse = d.pow(2).mean().item<double>();
  e.max_abs = d.abs().max().item<double>();
  const double power = w.pow(2).mean().item<double>(), var = w.var().item<double>();
  e.sqnr_db = 10.0 * std::log10(power / std::max(e.mse, 1e-300));
  e.bits_per_weight = p.spec.bits_per_weight(p.out, p.in);
  // D(R) = sigma^2 4^-R  <=>  R(D) = log2(sigma^2 / D) / 2.
  e.rd_gap_bits = e.bits_per_weight - 0.5 * std::log2(var / std::max(e.mse, 1e-300));
  return e;
}

}  // namespace kldq::formats
