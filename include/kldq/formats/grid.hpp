// Quantization grids: a format's per-group parameters (scales, zero points) for one weight, held
// fixed so that weights can be rounded onto them column by column (GPTQ updates the columns it
// has not quantized yet, AWQ rescales and clips before rounding) and packed with exactly those
// parameters. make_grid + pack_on_grid is round-to-nearest: it gives quantize_rtn's tensors bit
// for bit (tested), so every method emits the same stored formats (docs/FORMATS.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "kldq/formats/packed.hpp"

namespace kldq::formats {

// Whether weights of `in` columns in `spec` have a grid: int2/3/4 (groups), int8 and fp8 scaled
// per channel, nf4/fp4 when `in` is a multiple of the block (each block then lies in one row).
// Dense formats (bf16, fp16) and unscaled or per-tensor fp8 have none.
bool has_grid(const FormatSpec& spec, int64_t in);
// Columns one group spans: the int group or nf4/fp4 block, or `in` for per-channel formats.
int64_t grid_group(const FormatSpec& spec, int64_t in);

struct Grid {
  FormatSpec spec;
  int64_t out = 0, in = 0, group = 0;  // group = grid_group(spec, in)
  at::Tensor scale;  // [out, groups] fp32: int step (fp16-rounded, as stored); int8 step; fp8 step
                     // (absmax / format max); nf4/fp4 absmax
  at::Tensor zero;   // [out, groups] fp32 zero point (int2/3/4), else undefined
};

// Round-to-nearest parameters of the columns w: [out, k] as one group (k <= the group size, or
// the whole row for per-channel formats): scale [out], zero [out] (undefined without a zero).
// UnsupportedError naming `spec` for a format without a grid.
void group_params(const at::Tensor& w, const FormatSpec& spec, at::Tensor& scale, at::Tensor& zero);
// Every group's parameters of w: [out, in] (fp32, any device): round-to-nearest's grid.
Grid make_grid(const at::Tensor& w, const FormatSpec& spec);
// w: [out, k] (fp32) rounded to the nearest grid value, with one group's parameters scale, zero:
// [out] (zero undefined when the format has none) -> [out, k] fp32, the dequantized values.
at::Tensor round_to_grid(const at::Tensor& w, const FormatSpec& spec, const at::Tensor& scale,
                         const at::Tensor& zero);
// One group's parameters prepared for rounding many columns (GPTQ rounds one at a time): the
// values of round_to_grid, with fewer kernel launches for the int formats.
class GroupRounder {
 public:
  // scale, zero: [out] (zero undefined when the format has none).
  GroupRounder(const FormatSpec& spec, at::Tensor scale, at::Tensor zero);
  // w: [out] fp32, one column -> its values on the grid, [out] fp32.
  at::Tensor operator()(const at::Tensor& w) const;

 private:
  FormatSpec spec_;
  at::Tensor scale_, zero_, safe_;  // safe_: the scale with 0 replaced by 1 (the divisor)
  double max_code_ = 0;
  bool int_ = false;
  CodeSearch search_;  // nf4/fp4: the code tables on the scale's device
  at::Tensor inv_;     // nf4/fp4: 1 / absmax
};

// The whole weight w: [out, in] rounded onto `grid` -> [out, in] fp32 dequantized values.
at::Tensor fake_quantize(const at::Tensor& w, const Grid& grid);
// w: [out, in] (any float dtype; values on the grid stay exactly themselves) -> the stored tensors
// of grid.spec with grid's parameters, on w's device.
PackedWeight pack_on_grid(const at::Tensor& w, const Grid& grid);

// a / b in IEEE fp32 on every device (a CUDA tensor divided by a host scalar is multiplied by its
// reciprocal instead, which rounds differently from the CPU's division).
at::Tensor ieee_div(const at::Tensor& a, double b);

// The fp8 formats' largest finite value (e5m2 57344, e4m3fn 448) and PyTorch dtype, the one
// place the quantizers (RTN here and in quantize.cpp, GPTQ/AWQ through grids) take them from.
float fp8_max(Format f);
at::ScalarType fp8_type(Format f);

}  // namespace kldq::formats
