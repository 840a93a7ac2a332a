// Raw-pointer launchers of the dequantization kernels (dequant_cuda.cu). Internal to the kernels
// module: no ATen types. Every launcher writes a contiguous [rows, cols] output of dtype t whose
// values equal formats::dequantize (fp32) rounded once to t; `vec` promises cols % 8 == 0 and a
// 16-byte aligned output (and 4-byte aligned codes), enabling vector loads and stores.
#pragma once

#include <cstdint>

#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {

// nf4 / fp4 (bitsandbytes layout): n = rows * cols elements, absmax per block of `block` (a
// power of two >= 32) over the flattened weight.
void dequant_4bit(Dtype t, bool fp4, const uint8_t* codes, const float* absmax, int64_t rows,
                  int64_t cols, int block, void* out, bool vec, void* stream);

// int2/3/4 groups: codes [rows, ceil(cols * bits / 8)] LSB-first, scales fp16 [rows, groups],
// zeros uint8 [rows, groups] (asym) or zeros_f16 fp16 [rows, groups] (fz) or neither (symmetric:
// zero point 2^(bits-1)).
void dequant_int_group(Dtype t, const uint8_t* codes, const uint16_t* scales, const uint8_t* zeros,
                       const uint16_t* zeros_f16, int bits, int64_t rows, int64_t cols, int group,
                       void* out, bool vec, void* stream);

// int8 per row: codes [rows, cols] int8, scales fp16 [rows].
void dequant_int8(Dtype t, const int8_t* codes, const uint16_t* scales, int64_t rows, int64_t cols,
                  void* out, bool vec, void* stream);

// fp8 e4m3fn / e5m2: codes [rows, cols]; scales fp32 [rows], [1] (per_tensor) or nullptr (plain
// cast).
void dequant_fp8(Dtype t, bool e5m2, const uint8_t* codes, const float* scales, bool per_tensor,
                 int64_t rows, int64_t cols, void* out, bool vec, void* stream);

}  // namespace kldq::kernels::cuda
