// HQQ: with the inverse scale s = (2^b - 1) / (max - min) per group fixed, the zero point z
// minimises ||W - (Q(W) - z) / s||_p^p by half-quadratic splitting (W_e the error variable):
//   W_q = clamp(round(W s + z), 0, 2^b - 1),  W_r = (W_q - z) / s
//   W_e = shrink_p(W - W_r, beta) = sign(x) max(|x| - |x|^(p-1) / beta, 0)   (generalised soft
//         threshold, the proximal operator of the l_p term)
//   z   = mean_group(W_q - (W - W_e) s)                                      (the quadratic step)
// repeated while the mean absolute error of W_r decreases. The operation order is the reference
// implementation's (scalar-over-tensor divisions are reciprocal-then-multiply there), so the
// codes, scales and zero points equal hqq's on the CPU (tests/oracle/hqq_oracle.py).
#include "kldq/quant/hqq.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "kldq/core/error.hpp"

namespace kldq::quant {
namespace {

at::Tensor shrink_lp(const at::Tensor& x, double beta, double p) {
  at::Tensor out = x.abs();
  out.sub_(out.pow(p - 1).mul(1.0 / beta)).clamp_min_(0.0);  // |x| = 0: inf threshold, gives 0
  return out.mul_(at::sign(x));
}

// The fit as the _fz format stores it: codes of W: [out * groups, g] at inverse scales s and
// zero points z ([out * groups, 1]), scales 1/s and zeros in fp16. UnsupportedError naming `what`
// when a zero point is beyond fp16's range.
formats::PackedWeight pack_fit(const at::Tensor& W, const at::Tensor& s, const at::Tensor& z,
                               const formats::FormatSpec& spec, int64_t out, int64_t in,
                               const std::string& what) {
  const int bits = spec.traits().code_bits;
  const double qmax = std::ldexp(1.0, bits) - 1;
  const int64_t g = spec.group, groups = (in + g - 1) / g;
  const at::Tensor codes = at::round(W * s + z).clamp_(0, qmax).reshape({out, groups * g});
  formats::PackedWeight p;
  p.spec = spec;
  p.out = out;
  p.in = in;
  p.codes = formats::pack_bits(codes.narrow(1, 0, in).to(at::kByte), bits);
  p.scales = s.reciprocal().reshape({out, groups}).to(at::kHalf);
  p.zeros = z.reshape({out, groups}).to(at::kHalf);
  // A group far from 0 with a tiny range (values 4.0 to 4.0002: s at its 2e4 clamp, z = -8e4)
  // has a zero point fp16 cannot hold; the reference would store inf as well. Refused.
  if (!at::isfinite(p.zeros).all().item<bool>())
    throw UnsupportedError(fmt::format(
        "{}: HQQ zero points beyond fp16's range (|z| up to {:.4g}): groups with a tiny range far "
        "from 0; quantize this layer with an _asym format and --method rtn, gptq or awq",
        what, z.abs().max().item<double>()));
  return p;
}

}  // namespace

formats::PackedWeight quantize_hqq(const at::Tensor& w_in, const formats::FormatSpec& spec,
                                   const HqqOptions& o, const std::string& what) {
  if (!spec.float_zero)
    throw UnsupportedError(fmt::format(
        "HQQ fits float zero points: format {} cannot hold them (use an _fz int format, e.g. "
        "int4_g64_fz)",
        spec.name()));
  check(w_in.dim() == 2, "quantize_hqq: weight must be [out, in]");
  const int bits = spec.traits().code_bits;
  const double qmax = std::ldexp(1.0, bits) - 1;
  const at::Tensor w = w_in.to(at::kFloat).contiguous();  // [out, in] fp32
  const int64_t out = w.size(0), in = w.size(1), g = spec.group, groups = (in + g - 1) / g;
  const int64_t pad = groups * g - in;
  // [out * groups, g] fp32: one group per row (the reference's reshape([-1, group]), axis 1).
  const at::Tensor W =
      (pad ? at::cat({w, w.narrow(1, in - 1, 1).expand({out, pad})}, 1) : w).reshape({-1, g});
  at::Tensor mask, count;  // padded columns: [out * groups, g] 0/1 and [out * groups, 1] counts
  if (pad) {
    const at::Tensor real = (at::arange(groups * g, W.options()) < static_cast<double>(in));
    mask = real.to(at::kFloat).unsqueeze(0).expand({out, groups * g}).reshape({-1, g});
    count = mask.sum(1, true);
  }
  auto group_mean = [&](const at::Tensor& t) {
    return pad ? (t * mask).sum(1, true) / count : t.mean(1, true);
  };
  auto error = [&](const at::Tensor& wr) {
    const at::Tensor e = (W - wr).abs();
    return pad ? ((e * mask).sum() / mask.sum()).item<double>() : e.mean().item<double>();
  };
  const at::Tensor lo = std::get<0>(W.min(1, true)), hi = std::get<0>(W.max(1, true));
  const at::Tensor denom = hi - lo;
  // Inverse scale; flat groups get 1 and a clamp keeps s (and later fp16 scales) in range.
  at::Tensor s = at::where(denom.abs() <= 1e-4, at::ones_like(denom), denom.reciprocal() * qmax)
                     .clamp_max(2e4);
  at::Tensor z = lo.neg() * s;
  if (o.rounds_zero(bits)) z = at::round(z);
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < o.iters; ++i) {
    const at::Tensor wq = at::round(W * s + z).clamp_(0, qmax);
    const at::Tensor wr = (wq - z) / s;
    const at::Tensor we = shrink_lp(W - wr, o.beta, o.lp_norm);
    z = group_mean(wq - (W - we) * s);  // updated before the stop test, as the reference does
    const double err = error(wr);
    if (!(err < best)) break;
    best = err;
  }
  return pack_fit(W, s, z, spec, out, in, what);
}

}  // namespace kldq::quant
