// Raw-pointer launchers of the fused CUDA kernels (fused_cuda.cu, rope_cuda.cu) and the switch of
// chained launches (fused_cuda.cu). Internal to the kernels module: no ATen types, so nvcc
// compiles the .cu without libtorch's headers.
#pragma once

#include <cstdint>

namespace kldq::kernels::cuda {

enum class Dtype { F32, F16, BF16 };

// Whether launch_chained (cuda_common.cuh) overlaps kernels: the device supports it (9.0+) and
// it is on (KLDQ_PDL unset or 1 at the first launch; set_chaining overrides).
bool chaining();
void set_chaining(bool on);

// x, out: [rows, h] contiguous; residual/delta/sum optional (nullptr) for the plain norm.
void rms_norm(Dtype t, const void* x, const void* delta, void* sum, const void* weight, void* out,
              int64_t rows, int64_t h, float eps, void* stream);

// x: [B, T, n, d] with element strides (sb, st, sn, 1); cos/sin: [T, d] (cb = 0) or per-row
// [B, T, d] (cb = T d), contiguous; out contiguous.
void rope(Dtype t, const void* x, const void* cos, const void* sin, void* out, int64_t B, int64_t T,
          int64_t n, int64_t d, int64_t sb, int64_t st, int64_t sn, int64_t cb, void* stream);

// A decode step's RoPE and cache append in one kernel: q [B, T, nq, d] rotated into q_out
// (contiguous); k [B, T, nkv, d] rotated and v copied into the caches kc, vc [B, nkv, capacity,
// d] (contiguous) at columns cols[0..T) (int64 on the device). Each source's heads are
// contiguous rows of d (head h at x + b sb + t st + h d); cos/sin as rope's (cb = 0 or T d).
struct RopeAppend {
  struct Source {
    const void* x;
    int64_t sb, st;
  };
  Source q, k, v;
  const void *cos, *sin;
  int64_t cb;
  void *q_out, *kc, *vc;
  const int64_t* cols;
  int64_t B, T, nq, nkv, d, capacity;
};
// Whether the kernel takes these operands (16-byte aligned rows, d / 2 a multiple of 16 bytes).
bool rope_append_fits(Dtype t, const RopeAppend& a);
void rope_append(Dtype t, const RopeAppend& a, void* stream);

// A KV-cache step's RoPE rows and mask (kernels::step_inputs): cols [T], pad [B] int64 on the
// device; tables cos/sin [len, d]; outputs cos_out/sin_out [B, T, d] and mask [B, 1, T, K]
// (nullptr: none), all contiguous. Traps on a position past the table.
struct StepInputs {
  const int64_t *cols, *pad;
  const void *cos, *sin;
  void *cos_out, *sin_out, *mask;
  int64_t B, T, d, K, len;
};
void step_inputs(Dtype t, const StepInputs& a, void* stream);

// gate, up: rows of i values, row r at gate + r rs and up + r rs -> out: [rows, i] contiguous.
void silu_mul(Dtype t, const void* gate, const void* up, void* out, int64_t rows, int64_t i,
              int64_t rs, void* stream);

}  // namespace kldq::kernels::cuda
