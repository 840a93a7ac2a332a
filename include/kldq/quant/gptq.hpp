// GPTQ (Frantar et al. 2022): quantizes a weight column by column against the Hessian of its
// layer's reconstruction error, H = 2 X^T X over the calibration inputs X, spreading each
// column's rounding error over the columns not yet quantized. docs/PROTOCOLS.md, "GPTQ".
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "kldq/formats/grid.hpp"

namespace kldq::quant {

struct GptqOptions {
  double damp = 0.01;     // dampening, a fraction of the mean diagonal of H
  int64_t block = 128;    // columns per lazy batch update
  bool act_order = true;  // columns in order of decreasing H_jj, groups static (llm-compressor's
                          // default, actorder=static)
};

// Accumulates H = sum over calls of 2 x^T x (fp32) from layer inputs x: [..., in].
class Hessian {
 public:
  void add(const at::Tensor& x);
  const at::Tensor& matrix() const { return h_; }  // [in, in] fp32, undefined before add()
  int64_t tokens() const { return tokens_; }

 private:
  at::Tensor h_;
  int64_t tokens_ = 0;
};

struct GptqResult {
  at::Tensor q;          // [out, in] fp32: the quantized weight's values, all on `grid`
  formats::Grid grid;    // pack_on_grid(q, grid) gives the stored tensors
  double damp = 0;       // the dampening that gave a positive definite H (after retries)
  int64_t dead = 0;      // input channels that were zero on every calibration token
  double error = 0;      // tr((W - Q) H (W - Q)^T): the calibration output error, summed
  double rtn_error = 0;  // the same for round-to-nearest on the same grid
};

// w: [out, in] (any float dtype and device), h: [in, in] fp32 on w's device -> w quantized to
// `spec` (a format with a grid, formats::has_grid; UnsupportedError naming `layer` otherwise). Dead
// inputs (H_jj = 0) get H_jj = 1: their columns are rounded to nearest and pass no error on. A
// failed Cholesky factorisation is retried with ten times the dampening (logged, naming `layer`),
// up to 1e4 x the mean diagonal; an Error (exit 1) naming `layer` after that.
GptqResult gptq_quantize(const at::Tensor& w, const at::Tensor& h, const formats::FormatSpec& spec,
                         const GptqOptions& options, const std::string& layer);

}  // namespace kldq::quant
