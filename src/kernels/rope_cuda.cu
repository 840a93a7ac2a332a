// CUDA kernels of rotate-half RoPE, alone or with a step's K/V cache append, in transformers'
// rounding order (fused_cuda.cu's header says how): rope for the uncached forward, a first
// unpadded prefill and continuations of a shared prefix; rope_append for every other pass through
// a KV cache (decode steps, padded prefills); step_inputs, the RoPE rows and mask of such a step.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>

#include "cuda_common.cuh"
#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

// One rotate-half RoPE pair (x[i], x[i + d/2]) = (l, h) with its cos/sin entries, in
// transformers' rounding order (each product rounded to T, then their sum):
//   o_lo = T(T(l * c_lo) + T(-h * s_lo)),  o_hi = T(T(h * c_hi) + T(l * s_hi))
template <class T>
__device__ inline void rotate_pair(T x_lo, T x_hi, T cos_lo, T cos_hi, T sin_lo, T sin_hi, T& o_lo,
                                   T& o_hi) {
  auto f = [](T v) { return Conv<T>::to_float(v); };
  const float l = f(x_lo), h = f(x_hi), c_lo = f(cos_lo), c_hi = f(cos_hi), s_lo = f(sin_lo),
              s_hi = f(sin_hi);
  o_lo = Conv<T>::from_float(
      __fadd_rn(round_to<T>(__fmul_rn(l, c_lo)), round_to<T>(__fmul_rn(-h, s_lo))));
  o_hi = Conv<T>::from_float(
      __fadd_rn(round_to<T>(__fmul_rn(h, c_hi)), round_to<T>(__fmul_rn(l, s_hi))));
}

// One thread per rotation pair (i, i + d/2) of one head of one token (rotate_pair).
//   out[i]       = T(T(x[i] * cos[i])             + T(-x[i + d/2] * sin[i]))
//   out[i + d/2] = T(T(x[i + d/2] * cos[i + d/2]) + T( x[i]       * sin[i + d/2]))
template <class T>
__global__ void rope_kernel(const T* __restrict__ x, const T* __restrict__ cos,
                            const T* __restrict__ sin, T* __restrict__ out, int64_t B, int64_t T_,
                            int64_t n, int64_t d, int64_t sb, int64_t st, int64_t sn, int64_t cb) {
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
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
    const int64_t row = b * cb + t * d;  // the token's cos/sin row
    rotate_pair<T>(xr[i], xr[i + half], cos[row + i], cos[row + i + half], sin[row + i],
                   sin[row + i + half], outr[i], outr[i + half]);
  }
}

// N rotated pairs (lo[k], hi[k]) with their cos/sin entries, rope_kernel's formula per element.
template <class T, int N>
__device__ inline void rotate_pack(const T* xr, const T* cos, const T* sin, T* out, uint32_t i,
                                   uint32_t half) {
  const Pack<T, N> lo = load_pack<T, N>(xr + i), hi = load_pack<T, N>(xr + i + half);
  const Pack<T, N> c_lo = load_pack<T, N>(cos + i), c_hi = load_pack<T, N>(cos + i + half);
  const Pack<T, N> s_lo = load_pack<T, N>(sin + i), s_hi = load_pack<T, N>(sin + i + half);
  Pack<T, N> o_lo, o_hi;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    rotate_pair<T>(lo.e[k], hi.e[k], c_lo.e[k], c_hi.e[k], s_lo.e[k], s_hi.e[k], o_lo.e[k],
                   o_hi.e[k]);
  }
  store_pack<T, N>(out + i, o_lo);
  store_pack<T, N>(out + i + half, o_hi);
}

// Vector form: one thread per N consecutive pairs (N * sizeof(T) = 16 bytes), 32-bit indices.
//   x row of one head:  | lo: x[i .. i+N) ... | hi: x[i+d/2 .. i+d/2+N) ... |   (d/2 % N == 0)
// Same per-element formula as rope_kernel.
template <class T, int N>
__global__ void rope_vec_kernel(const T* __restrict__ x, const T* __restrict__ cos,
                                const T* __restrict__ sin, T* __restrict__ out, uint32_t T_,
                                uint32_t n, uint32_t d, uint32_t total, int64_t sb, int64_t st,
                                int64_t sn, int64_t cb) {
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
  const uint32_t half = d / 2, per_head = half / N, per_token = n * per_head;
  for (uint32_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += gridDim.x * blockDim.x) {
    const uint32_t token = idx / per_token, rem = idx - token * per_token;
    const uint32_t head = rem / per_head, i = (rem - head * per_head) * N;
    const uint32_t b = token / T_, t = token - b * T_;
    const int64_t row = b * cb + int64_t(t) * d;  // the token's cos/sin row
    rotate_pack<T, N>(x + b * sb + t * st + head * sn, cos + row, sin + row,
                      out + (int64_t(token) * n + head) * d, i, half);
  }
}

// A decode step's q, k and v in one pass: q rotated into q_out [B, T, nq, d]; k rotated and v
// copied into the caches [B, nkv, C, d] at column cols[t] (what rope() then index_copy_ along
// the columns give, value for value). Head h of token (b, t) of source s is at
// s.x + b s.sb + t s.st + h d; the threads run over the heads q 0..nq-1, k, then v:
//   thread -> (token, head of nq + 2 nkv, pack i of N pairs)
template <class T>
struct RopeSource {
  const T* x;
  int64_t sb, st;
};
template <class T, int N>
__global__ void rope_append_kernel(RopeSource<T> q, RopeSource<T> k, RopeSource<T> v,
                                   const T* __restrict__ cos, const T* __restrict__ sin, int64_t cb,
                                   T* __restrict__ q_out, T* __restrict__ kc, T* __restrict__ vc,
                                   const int64_t* __restrict__ cols, uint32_t T_, uint32_t nq,
                                   uint32_t nkv, uint32_t d, int64_t capacity, uint32_t total) {
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
  const uint32_t half = d / 2, per_head = half / N, per_token = (nq + 2 * nkv) * per_head;
  for (uint32_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += gridDim.x * blockDim.x) {
    const uint32_t token = idx / per_token, rem = idx - token * per_token;
    uint32_t head = rem / per_head;
    const uint32_t i = (rem - head * per_head) * N, b = token / T_, t = token - b * T_;
    const int64_t row = b * cb + int64_t(t) * d;  // the token's cos/sin row
    if (head < nq) {
      rotate_pack<T, N>(q.x + b * q.sb + t * q.st + head * d, cos + row, sin + row,
                        q_out + (int64_t(token) * nq + head) * d, i, half);
      continue;
    }
    head -= nq;
    const bool is_v = head >= nkv;
    if (is_v) head -= nkv;
    const int64_t col = cols[t];
    if (col < 0 || col >= capacity) __trap();  // a column outside the cache: never write there
    const int64_t at = ((int64_t(b) * nkv + head) * capacity + col) * d;
    if (!is_v) {
      rotate_pack<T, N>(k.x + b * k.sb + t * k.st + head * d, cos + row, sin + row, kc + at, i,
                        half);
    } else {
      const T* src = v.x + b * v.sb + t * v.st + head * d;
      store_pack<T, N>(vc + at + i, load_pack<T, N>(src + i));
      store_pack<T, N>(vc + at + i + half, load_pack<T, N>(src + i + half));
    }
  }
}

// A KV-cache step's per-row inputs (kernels::step_inputs), one block per (row b, token t):
//   pos                = max(cols[t] - pad[b], 0)
//   cos_out[b, t, :]   = cos[pos, :], sin_out likewise (copies: the table's own values)
//   mask[b, 0, t, k]   = 0 where key k is visible to column c = cols[t]: pad[b] <= k <= c, or
//                        k == c for a pad column (c < pad[b]); -inf elsewhere
template <class T>
__global__ void step_inputs_kernel(const int64_t* __restrict__ cols,
                                   const int64_t* __restrict__ pad, const T* __restrict__ cos,
                                   const T* __restrict__ sin, T* __restrict__ cos_out,
                                   T* __restrict__ sin_out, T* __restrict__ mask, uint32_t T_,
                                   uint32_t d, int64_t K, int64_t len) {
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
  const int64_t row = blockIdx.x, t = row % T_, c = cols[t], p = pad[row / T_];
  const int64_t pos = c > p ? c - p : 0;
  if (pos >= len) __trap();  // a position past the table: never read there
  for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
    cos_out[row * d + i] = cos[pos * d + i];
    sin_out[row * d + i] = sin[pos * d + i];
  }
  if (!mask) return;
  const T seen = Conv<T>::from_float(0.0f), unseen = Conv<T>::from_float(-INFINITY);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
    mask[row * K + k] = (k >= p && k <= c) || (c < p && k == c) ? seen : unseen;
}

}  // namespace

void rope(Dtype t, const void* x, const void* cos, const void* sin, void* out, int64_t B, int64_t T,
          int64_t n, int64_t d, int64_t sb, int64_t st, int64_t sn, int64_t cb, void* stream) {
  const int64_t total = B * T * n * (d / 2);
  if (total == 0) return;
  const int64_t N = 16 / element_size(t);
  const bool vec = (d / 2) % N == 0 && sb % N == 0 && st % N == 0 && sn % N == 0 && cb % N == 0 &&
                   aligned(x, 16) && aligned(cos, 16) && aligned(sin, 16) && aligned(out, 16) &&
                   total / N < (int64_t{1} << 31);
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch(t, [&](auto tag) {
    using E = decltype(tag);
    const E *xe = static_cast<const E*>(x), *ce = static_cast<const E*>(cos),
            *se = static_cast<const E*>(sin);
    if (vec) {
      constexpr int V = 16 / sizeof(E);
      const auto items = static_cast<uint32_t>(total / V);
      launch_chained("rope", rope_vec_kernel<E, V>, grid_for(items, 256), 256, 0, s, xe, ce, se,
                     static_cast<E*>(out), uint32_t(T), uint32_t(n), uint32_t(d), items, sb, st, sn,
                     cb);
    } else {
      launch_chained("rope", rope_kernel<E>, grid_for(total, 256), 256, 0, s, xe, ce, se,
                     static_cast<E*>(out), B, T, n, d, sb, st, sn, cb);
    }
  });
}

bool rope_append_fits(Dtype t, const RopeAppend& a) {
  const int64_t N = 16 / element_size(t);
  bool ok = (a.d / 2) % N == 0 && a.cb % N == 0 && aligned(a.cos, 16) && aligned(a.sin, 16) &&
            aligned(a.q_out, 16) && aligned(a.kc, 16) && aligned(a.vc, 16) &&
            a.B * a.T * (a.nq + 2 * a.nkv) * (a.d / 2) / N < (int64_t{1} << 31);
  for (const RopeAppend::Source* s : {&a.q, &a.k, &a.v})
    ok = ok && s->sb % N == 0 && s->st % N == 0 && aligned(s->x, 16);
  return ok;
}

void rope_append(Dtype t, const RopeAppend& a, void* stream) {
  if (!rope_append_fits(t, a)) throw std::runtime_error("rope_append: unaligned operands");
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch(t, [&](auto tag) {
    using E = decltype(tag);
    constexpr int V = 16 / sizeof(E);
    const auto items = static_cast<uint32_t>(a.B * a.T * (a.nq + 2 * a.nkv) * (a.d / 2) / V);
    if (items == 0) return;
    auto src = [](const RopeAppend::Source& x) {
      return RopeSource<E>{static_cast<const E*>(x.x), x.sb, x.st};
    };
    launch_chained("rope_append", rope_append_kernel<E, V>, grid_for(items, 256), 256, 0, s,
                   src(a.q), src(a.k), src(a.v), static_cast<const E*>(a.cos),
                   static_cast<const E*>(a.sin), a.cb, static_cast<E*>(a.q_out),
                   static_cast<E*>(a.kc), static_cast<E*>(a.vc), a.cols, uint32_t(a.T),
                   uint32_t(a.nq), uint32_t(a.nkv), uint32_t(a.d), a.capacity, items);
  });
}

void step_inputs(Dtype t, const StepInputs& a, void* stream) {
  const int64_t rows = a.B * a.T;
  if (rows == 0) return;
  if (rows >= (int64_t{1} << 31)) throw std::runtime_error("step_inputs: too many rows");
  dispatch(t, [&](auto tag) {
    using E = decltype(tag);
    launch_chained("step_inputs", step_inputs_kernel<E>, dim3(uint32_t(rows)), 128, 0,
                   static_cast<cudaStream_t>(stream), a.cols, a.pad, static_cast<const E*>(a.cos),
                   static_cast<const E*>(a.sin), static_cast<E*>(a.cos_out),
                   static_cast<E*>(a.sin_out), static_cast<E*>(a.mask), uint32_t(a.T),
                   uint32_t(a.d), a.K, a.len);
  });
}

}  // namespace kldq::kernels::cuda
