// HQQ (Half-Quadratic Quantization, Badri & Shaji 2023, mobiusml/hqq): calibration-free affine
// group-wise quantization whose zero points are fitted to the weights by proximal steps under
// an l_p (p < 1) error, with the scales fixed at their min/max values. kldq follows the
// reference's default solver (optimize_weights_proximal_legacy: no beta schedule, stop at the
// first step that does not lower mean |W - W_r|), in fp32 on every device; the result is stored
// in an `_fz` int format (fp16 scale and float zero point per group of input columns).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "kldq/formats/packed.hpp"

namespace kldq::quant {

struct HqqOptions {
  double lp_norm = 0.7;  // p of the error the proximal steps minimise (< 1 favours sparse errors)
  double beta = 10;      // splitting penalty: the shrinkage threshold is |x|^(p-1) / beta
  int iters = 20;        // at most
  // Round the initial zero point to an integer (the reference's default for 4 bits only).
  std::optional<bool> round_zero;
  bool rounds_zero(int bits) const { return round_zero.value_or(bits == 4); }
};

// w: [out, in] (any float dtype and device; computed in fp32 there) -> the packed weight in
// `spec`, an int2/3/4 `_fz` format. A partial last group is padded with its row's last column
// for the min/max and left out of every mean. UnsupportedError naming the format otherwise, or
// naming `what` when a fitted zero point does not fit fp16.
formats::PackedWeight quantize_hqq(const at::Tensor& w, const formats::FormatSpec& spec,
                                   const HqqOptions& options, const std::string& what = "weight");

}  // namespace kldq::quant
