// Fused dequantize + GEMV for packed weights and a few rows of activations (decode steps): each
// weight byte is read once from device memory, with no dequantized copy in a workspace. bf16 and
// fp16 activations (1..16 rows) go to the tensor-core kernel of gemv_mma.cuh; fp32 ones (1..4
// rows) to the SIMT kernel below, whose layout of the work is:
//
//   block b: warps 0..3 -> output rows 4b .. 4b+3 (one warp per row r)
//   warp of row r:  lane l takes chunks l, l+32, l+64, ... of the row (a chunk: 8 weights,
//                   b bytes of codes), kUnroll chunks' loads in flight before decoding;
//                   chunk k multiplies columns 8k..8k+7 of every x row (16-byte loads of x,
//                   which the whole grid shares through L1/L2)
//   reduction:      fp32 partial sums of the 32 lanes by warp shuffles; lane 0 writes y[:, r]
//
// Numerics: each weight is decoded as the dequantization kernel does (code value x scale, one
// fp32 product) and rounded to the activations' dtype, i.e. exactly the weight the
// dequantize-then-GEMM path hands to cuBLAS; products are summed in fp32 (as cuBLAS does for
// bf16/fp16), bias added in fp32, one rounding of the result. Only the order of the sum differs.
#include "decode_cuda.cuh"
#include "gemv_cuda.hpp"
#include "gemv_mma.cuh"

#include <type_traits>

namespace kldq::kernels::cuda {
namespace {

constexpr int kWarps = 4;   // rows (warps) per block: small layers still spread over the SMs
constexpr int kUnroll = 8;  // chunk loads in flight per lane

template <class T, class D, int kM>
__global__ void __launch_bounds__(32 * kWarps)
    gemv_kernel(D d, const T* __restrict__ x, int m, const T* __restrict__ bias, T* __restrict__ y,
                int64_t rows, uint32_t per_row, CodeTable table) {
  load_table(table);
  chain_release();  // launched chained (cuda_common.cuh): x, bias and y only after the wait
  chain_wait();
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= rows) return;  // whole warps: the shuffles below see full warps only
  const int64_t cols = int64_t(per_row) * 8, base = r * per_row;
  float acc[kM];
#pragma unroll
  for (int b = 0; b < kM; ++b) acc[b] = 0.f;
  for (uint32_t k0 = lane; k0 < per_row; k0 += 32 * kUnroll) {
    typename D::Raw raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t k = k0 + 32 * u;
      if (k < per_row) raw[u] = d.load(base + k, static_cast<uint32_t>(r));
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t k = k0 + 32 * u;
      if (k >= per_row) break;
      float v[8];
      d.decode(raw[u], v);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = round_to<T>(v[j]);
#pragma unroll
      for (int b = 0; b < kM; ++b) {
        if (b >= m) break;
        const Pack<T, 8> xv = load_pack<T, 8>(x + b * cols + int64_t(k) * 8);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[b] = fmaf(v[j], Conv<T>::to_float(xv.e[j]), acc[b]);
      }
    }
  }
#pragma unroll
  for (int b = 0; b < kM; ++b)
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[b] += __shfl_xor_sync(0xffffffffu, acc[b], off);
  if (lane != 0) return;
  const float add = bias ? Conv<T>::to_float(bias[r]) : 0.f;
  for (int b = 0; b < m; ++b) y[b * rows + r] = Conv<T>::from_float(acc[b] + add);
}

template <class D>
void launch(Dtype t, const D& d, const PackedView& w, const void* x, int64_t m, const void* bias,
            void* y, CodeTable table, bool swiglu, void* stream) {
  if (w.rows == 0 || m == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  if (t != Dtype::F32) {
    dispatch(t, [&](auto tag) {
      using T = decltype(tag);
      if constexpr (!std::is_same_v<T, float>)
        mma::launch(d, w, static_cast<const T*>(x), static_cast<int>(m),
                    static_cast<const T*>(bias), static_cast<T*>(y), table, swiglu, s);
    });
    return;
  }
  const unsigned blocks = static_cast<unsigned>((w.rows + kWarps - 1) / kWarps);
  const auto per_row = static_cast<uint32_t>(w.cols / 8);
  auto go = [&](auto rows_tag) {
    constexpr int M = decltype(rows_tag)::value;
    launch_chained("gemv_packed", gemv_kernel<float, D, M>, blocks, 32 * kWarps, 0, s, d,
                   static_cast<const float*>(x), static_cast<int>(m),
                   static_cast<const float*>(bias), static_cast<float*>(y), w.rows, per_row, table);
  };
  // Accumulators per x row are registers: instantiated for 1, 2 and 4 rows.
  if (m == 1)
    go(std::integral_constant<int, 1>{});
  else if (m == 2)
    go(std::integral_constant<int, 2>{});
  else
    go(std::integral_constant<int, 4>{});
}

}  // namespace

void gemv_packed(Dtype t, const PackedView& w, const void* x, int64_t m, const void* bias, void* y,
                 bool swiglu, void* stream) {
  if (m > gemv_max_rows(t) || w.cols % gemv_col_multiple(t) != 0)
    throw std::runtime_error("gemv_packed: needs at most gemv_max_rows rows and whole chunks");
  if (swiglu && (t == Dtype::F32 || w.rows % 16 != 0))
    throw std::runtime_error("gemv_packed: the SwiGLU epilogue takes bf16/fp16 and rows % 16 == 0");
  if (t != Dtype::F32 && reinterpret_cast<uintptr_t>(w.codes) % 16 != 0)
    throw std::runtime_error("gemv_packed: the tensor-core kernel reads 16-byte aligned codes");
  with_decoder(w, [&](const auto& d, const CodeTable& table) {
    launch(t, d, w, x, m, bias, y, table, swiglu, stream);
  });
}

}  // namespace kldq::kernels::cuda
