// Raw-pointer launchers of the fused CUDA kernels (fused_cuda.cu). Internal to the kernels
// module: no ATen types, so nvcc compiles the .cu without libtorch's headers.
#pragma once

#include <cstdint>

namespace kldq::kernels::cuda {

enum class Dtype { F32, F16, BF16 };

// x, out: [rows, h] contiguous; residual/delta/sum optional (nullptr) for the plain norm.
void rms_norm(Dtype t, const void* x, const void* delta, void* sum, const void* weight, void* out,
              int64_t rows, int64_t h, float eps, void* stream);

// x: [B, T, n, d] with element strides (sb, st, sn, 1); cos/sin: [T, d] (cb = 0) or per-row
// [B, T, d] (cb = T d), contiguous; out contiguous.
void rope(Dtype t, const void* x, const void* cos, const void* sin, void* out, int64_t B, int64_t T,
          int64_t n, int64_t d, int64_t sb, int64_t st, int64_t sn, int64_t cb, void* stream);

// gate, up: rows of i values, row r at gate + r rs and up + r rs -> out: [rows, i] contiguous.
void silu_mul(Dtype t, const void* gate, const void* up, void* out, int64_t rows, int64_t i,
              int64_t rs, void* stream);

}  // namespace kldq::kernels::cuda
