// CUDA kernels for the decoder's elementwise work: RMSNorm (+ residual add), rotate-half RoPE,
// SwiGLU. Each reproduces transformers' operation sequence rounding for rounding: every
// intermediate that PyTorch materialises as a tensor of dtype T is rounded to T here too, and
// products use __fmul_rn/__fadd_rn so the compiler cannot contract them into FMAs that PyTorch's
// separate kernels would not perform. One pass over memory instead of 5-8 kernels each.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

template <class T>
struct Conv;
template <>
struct Conv<float> {
  __device__ static float to_float(float v) { return v; }
  __device__ static float from_float(float v) { return v; }
};
template <>
struct Conv<__half> {
  __device__ static float to_float(__half v) { return __half2float(v); }
  __device__ static __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct Conv<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// Rounds a float to T and back: the value PyTorch would hold in a tensor of dtype T.
template <class T>
__device__ float round_to(float v) {
  return Conv<T>::to_float(Conv<T>::from_float(v));
}

constexpr int kNormThreads = 256;

// Block-wide sum of one float per thread (blockDim.x == kNormThreads).
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kNormThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kNormThreads / 32; ++w) total += warp_sums[w];
  return total;
}

// One block per row of h elements.
//   [delta != nullptr]  s = T(x + delta) is written to `sum` and normalised
//   normed = T(s * rsqrt(mean(s^2) + eps)),  out = T(weight * normed)
template <class T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ delta,
                                T* __restrict__ sum, const T* __restrict__ weight,
                                T* __restrict__ out, int64_t h, float eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * h;
  T* outr = out + row * h;
  float sq = 0.f;
  for (int64_t i = threadIdx.x; i < h; i += kNormThreads) {
    float v = Conv<T>::to_float(xr[i]);
    if (delta) {
      const T s = Conv<T>::from_float(__fadd_rn(v, Conv<T>::to_float(delta[row * h + i])));
      sum[row * h + i] = s;
      v = Conv<T>::to_float(s);
    }
    sq = __fadd_rn(sq, __fmul_rn(v, v));
  }
  // mean as PyTorch computes it: the sum times 1/h.
  const float mean = __fmul_rn(block_sum(sq), 1.f / static_cast<float>(h));
  const float rstd = rsqrtf(__fadd_rn(mean, eps));
  const T* src = delta ? sum + row * h : xr;  // each thread re-reads only what it wrote
  for (int64_t i = threadIdx.x; i < h; i += kNormThreads) {
    const float normed = round_to<T>(__fmul_rn(Conv<T>::to_float(src[i]), rstd));
    outr[i] = Conv<T>::from_float(__fmul_rn(Conv<T>::to_float(weight[i]), normed));
  }
}

// One thread per rotation pair (i, i + d/2) of one head of one token.
//   out[i]       = T(T(x[i] * cos[i])             + T(-x[i + d/2] * sin[i]))
//   out[i + d/2] = T(T(x[i + d/2] * cos[i + d/2]) + T( x[i]       * sin[i + d/2]))
template <class T>
__global__ void rope_kernel(const T* __restrict__ x, const T* __restrict__ cos,
                            const T* __restrict__ sin, T* __restrict__ out, int64_t B, int64_t T_,
                            int64_t n, int64_t d, int64_t sb, int64_t st, int64_t sn) {
  const int64_t half = d / 2;
  const int64_t total = B * T_ * n * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t head = (idx / half) % n;
    const int64_t t = (idx / (half * n)) % T_;
    const int64_t b = idx / (half * n * T_);
    const T* xr = x + b * sb + t * st + head * sn;
    T* outr = out + ((b * T_ + t) * n + head) * d;
    const float lo = Conv<T>::to_float(xr[i]), hi = Conv<T>::to_float(xr[i + half]);
    const float c_lo = Conv<T>::to_float(cos[t * d + i]), c_hi = Conv<T>::to_float(cos[t * d + i + half]);
    const float s_lo = Conv<T>::to_float(sin[t * d + i]), s_hi = Conv<T>::to_float(sin[t * d + i + half]);
    outr[i] = Conv<T>::from_float(
        __fadd_rn(round_to<T>(__fmul_rn(lo, c_lo)), round_to<T>(__fmul_rn(-hi, s_lo))));
    outr[i + half] = Conv<T>::from_float(
        __fadd_rn(round_to<T>(__fmul_rn(hi, c_hi)), round_to<T>(__fmul_rn(lo, s_hi))));
  }
}

// gate_up row layout: [gate_0 .. gate_{i-1} | up_0 .. up_{i-1}]  ->  out row [i]
//   out = T(T(g / (1 + exp(-g))) * u)   (PyTorch's silu formula, then the product)
template <class T>
__global__ void silu_mul_kernel(const T* __restrict__ gu, T* __restrict__ out, int64_t rows,
                                int64_t i) {
  const int64_t total = rows * i;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / i, c = idx % i;
    const float g = Conv<T>::to_float(gu[r * 2 * i + c]);
    const float u = Conv<T>::to_float(gu[r * 2 * i + i + c]);
    const float s = round_to<T>(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))));
    out[idx] = Conv<T>::from_float(__fmul_rn(s, u));
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

// Enough blocks to fill the GPU several times over; the kernels loop over the rest.
unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

template <class F>
void dispatch(Dtype t, F&& f) {
  switch (t) {
    case Dtype::F32: f(float{}); break;
    case Dtype::F16: f(__half{}); break;
    case Dtype::BF16: f(__nv_bfloat16{}); break;
  }
}

}  // namespace

void rms_norm(Dtype t, const void* x, const void* delta, void* sum, const void* weight, void* out,
              int64_t rows, int64_t h, float eps, void* stream) {
  if (rows == 0) return;
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    rms_norm_kernel<T><<<static_cast<unsigned>(rows), kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(delta), static_cast<T*>(sum),
        static_cast<const T*>(weight), static_cast<T*>(out), h, eps);
  });
  check_launch("rms_norm");
}

void rope(Dtype t, const void* x, const void* cos, const void* sin, void* out, int64_t B, int64_t T,
          int64_t n, int64_t d, int64_t sb, int64_t st, int64_t sn, void* stream) {
  const int64_t total = B * T * n * (d / 2);
  if (total == 0) return;
  dispatch(t, [&](auto tag) {
    using E = decltype(tag);
    rope_kernel<E><<<grid_for(total, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const E*>(x), static_cast<const E*>(cos), static_cast<const E*>(sin),
        static_cast<E*>(out), B, T, n, d, sb, st, sn);
  });
  check_launch("rope");
}

void silu_mul(Dtype t, const void* gate_up, void* out, int64_t rows, int64_t i, void* stream) {
  if (rows * i == 0) return;
  dispatch(t, [&](auto tag) {
    using E = decltype(tag);
    silu_mul_kernel<E><<<grid_for(rows * i, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const E*>(gate_up), static_cast<E*>(out), rows, i);
  });
  check_launch("silu_mul");
}

}  // namespace kldq::kernels::cuda
