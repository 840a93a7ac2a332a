// The raw-pointer view of one packed weight that the CUDA launchers take (dequant_cuda.cu,
// gemv_cuda.cu): which decoder reads it and the stored tensors' pointers. Internal to the kernels
// module: no ATen types (kernels/torch_cuda.hpp builds it from a formats::PackedWeight).
#pragma once

#include <cstdint>

namespace kldq::kernels::cuda {

// The stored tensors of one packed [rows, cols] weight (layouts in docs/FORMATS.md).
struct PackedView {
  enum class Kind { FourBit, IntGroup, Int8, Fp8 };
  Kind kind = Kind::FourBit;
  const uint8_t* codes = nullptr;
  const void* scales = nullptr;  // fp32 absmax (4-bit), fp16 (int), fp32 (fp8), or nullptr
  const void* zeros = nullptr;   // uint8 (asym int) or fp16 (float_zero), or nullptr
  bool fp4 = false, float_zero = false, e5m2 = false, per_tensor = false;
  int bits = 0;   // int group formats: code bits
  int group = 0;  // int group size, or the 4-bit absmax block
  int64_t rows = 0, cols = 0;

  // Bytes of one row's codes: row r's are codes[r row_bytes(), (r + 1) row_bytes()) (row-major
  // in every format; for the 4-bit ones when cols is even, which the fused GEMV requires).
  int64_t row_bytes() const {
    const int b = kind == Kind::FourBit ? 4 : kind == Kind::IntGroup ? bits : 8;
    return (cols * b + 7) / 8;
  }
};

}  // namespace kldq::kernels::cuda
