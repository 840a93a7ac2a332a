// Raw-pointer launchers of the dequantization kernels (dequant_cuda.cu). Internal to the kernels
// module: no ATen types. Every launcher writes a contiguous [rows, cols] output of dtype t whose
// values equal formats::dequantize (fp32) rounded once to t; `vec` promises cols % 8 == 0 and a
// 16-byte aligned output (and 4-byte aligned codes), enabling vector loads and stores.
#pragma once

#include <cstdint>

#include "fused_cuda.hpp"
#include "packed_view.hpp"

namespace kldq::kernels::cuda {

// The packed weight w (nf4/fp4 absmax blocks over the flattened weight; int2/3/4 groups with
// uint8, fp16 or implicit zero points; int8 and fp8 per row, per tensor or unscaled: layouts in
// docs/FORMATS.md) -> out [rows, cols] of dtype t.
void dequant_packed(Dtype t, const PackedView& w, void* out, bool vec, void* stream);

}  // namespace kldq::kernels::cuda
