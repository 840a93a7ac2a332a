// Attention of one decode step (T = 1) over a masked KV cache, split over the cache's columns
// (flash-decoding) in two chained kernels (cuda_common.cuh), in place of SDPA's: the step's
// kernels then overlap their launches end to end (SDPA's kernels are not chained).
//
//   attend_chunk   grid (chunks of kKeys columns, nkv, B), 128 threads: the g = nq / nkv query
//                  heads of kv head h over columns [kKeys c, kKeys (c + 1)):
//                    s[j][k] = (q_j . k_k) * scale + mask[k]   (fp32; k skipped where mask = -inf)
//                    m_j = max_k s, e[j][k] = exp(s - m_j), l_j = sum_k e, a_j = sum_k e v_k
//                  -> part[b][head][c] = {a_j [d], m_j, l_j}
//   combine        grid (nq, B), d threads: M = max_c m_c, out = sum_c e^(m_c - M) a_c /
//                  sum_c e^(m_c - M) l_c, rounded once to T.
//
// Numerics: scores, softmax and the weighted sum in fp32 from the cache's T values, one rounding
// of the output (SDPA's flash and cuDNN kernels also round the probabilities to T before the
// product with V: the two differ by T's rounding noise). Columns whose mask is -inf are never
// read, so stale or unwritten cache columns cannot reach the result.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>

#include "attention_cuda.hpp"
#include "cuda_common.cuh"

namespace kldq::kernels::cuda {
namespace {

constexpr int kKeys = 64;      // cache columns per block
constexpr int kThreads = 128;  // 4 warps
constexpr int kMaxGroup = 8;   // query heads per kv head

// q of the group in shared memory, fp32: dims [s D / 8, (s + 1) D / 8) of head j at
// qs[j][s (D / 8 + 1) + e], one float of padding per eighth so that the 8 lanes of a column,
// each reading its eighth, hit 8 different banks.
template <int D>
__device__ inline int qpos(int dim) {
  return dim / (D / 8) * (D / 8 + 1) + dim % (D / 8);
}

// Score pass, one warp per 16 columns: lane = 8 u + s takes column 4 i + u of the warp's
// iteration i and the dims [s D / 8, (s + 1) D / 8) of it; the 8 lanes of a column sum their
// partial dot products with shuffles (xor 1, 2, 4). live[k]: column k is unmasked (and < n).
template <class T, int D>
__device__ void scores(const T* __restrict__ kc, const T* __restrict__ mask,
                       const float (*qs)[D + 8], float (*p)[kKeys], bool* live, int g, int n,
                       float scale) {
  constexpr int kDims = D / 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, u = lane >> 3, s = lane & 7;
  for (int i = 0; i < kKeys / 16; ++i) {
    const int key = warp * 16 + 4 * i + u;
    const float m = key < n ? Conv<T>::to_float(mask[key]) : -INFINITY;
    const bool on = !isinf(m);
    float dot[kMaxGroup] = {};
    if (on) {
      const Pack<T, kDims> kv = load_pack<T, kDims>(kc + int64_t(key) * D + s * kDims);
#pragma unroll
      for (int e = 0; e < kDims; ++e) {
        const float kf = Conv<T>::to_float(kv.e[e]);
#pragma unroll
        for (int j = 0; j < kMaxGroup; ++j) dot[j] = fmaf(qs[j][s * (kDims + 1) + e], kf, dot[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j)
#pragma unroll
      for (int off = 1; off < 8; off <<= 1) dot[j] += __shfl_xor_sync(0xffffffffu, dot[j], off);
    if (s != 0) continue;
    live[key] = on;
    for (int j = 0; j < g; ++j) p[j][key] = on ? dot[j] * scale + m : -INFINITY;
  }
}

// Softmax pieces of each head's row of p, in place (warp w takes heads w and w + 4): p becomes
// exp(s - m), m and l go to ml[j].
__device__ void chunk_softmax(float (*p)[kKeys], float (*ml)[2], int g) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int j = warp; j < g; j += kThreads / 32) {
    float m = fmaxf(p[j][lane], p[j][lane + 32]);
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float l = 0.f;
    for (int k = lane; k < kKeys; k += 32) {
      const float e = m == -INFINITY ? 0.f : expf(p[j][k] - m);  // a chunk of masked columns
      p[j][k] = e;
      l += e;
    }
    for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) ml[j][0] = m, ml[j][1] = l;
  }
}

// part: fp32 [B, nq, chunks, D + 2] = {a [D], m, l} per (row, query head, chunk).
template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    attend_chunk(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                 const T* __restrict__ mask, float* __restrict__ part, int nq, int nkv, int64_t C,
                 float scale) {
  __shared__ float qs[kMaxGroup][D + 8];
  __shared__ float p[kMaxGroup][kKeys];
  __shared__ bool live[kKeys];
  __shared__ float ml[kMaxGroup][2];
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
  const int g = nq / nkv, h = blockIdx.y, b = blockIdx.z, chunks = gridDim.x;
  const int64_t k0 = int64_t(blockIdx.x) * kKeys;
  const int n = int(C - k0 < kKeys ? C - k0 : kKeys);
  const T* qb = q + (int64_t(b) * nq + int64_t(h) * g) * D;  // the group's g heads of q
  for (int i = threadIdx.x; i < kMaxGroup * D; i += kThreads)
    qs[i / D][qpos<D>(i % D)] = i / D < g ? Conv<T>::to_float(qb[i]) : 0.f;
  __syncthreads();
  const int64_t cache = ((int64_t(b) * nkv + h) * C + k0) * D;  // column k0 of (b, h)
  const T* mrow = mask + int64_t(b) * C + k0;                   // mask [B, 1, 1, C]
  scores<T, D>(kc + cache, mrow, qs, p, live, g, n, scale);
  __syncthreads();
  chunk_softmax(p, ml, g);
  __syncthreads();
  // a_j[dim] for dim pair t % (D / 2) and heads j = t / (D / 2) + k (kThreads / (D / 2)).
  constexpr int kPairs = D / 2, kSlots = kThreads / kPairs;
  const int pair = threadIdx.x % kPairs, slot = threadIdx.x / kPairs;
  float a[kMaxGroup / kSlots][2] = {};
#pragma unroll 8
  for (int key = 0; key < n; ++key) {
    // A masked column is never read (its e is 0): stale or unwritten values cannot reach a.
    Pack<T, 2> v;
    if (live[key])
      v = load_pack<T, 2>(vc + cache + int64_t(key) * D + 2 * pair);
    else
      v.e[0] = v.e[1] = Conv<T>::from_float(0.f);
    const float v0 = Conv<T>::to_float(v.e[0]), v1 = Conv<T>::to_float(v.e[1]);
#pragma unroll
    for (int r = 0; r < kMaxGroup / kSlots; ++r) {
      const float e = p[slot + r * kSlots][key];
      a[r][0] = fmaf(e, v0, a[r][0]);
      a[r][1] = fmaf(e, v1, a[r][1]);
    }
  }
  for (int r = 0; r < kMaxGroup / kSlots; ++r) {
    const int j = slot + r * kSlots;
    if (j >= g) break;
    float* out = part + ((int64_t(b) * nq + int64_t(h) * g + j) * chunks + blockIdx.x) * (D + 2);
    out[2 * pair] = a[r][0];
    out[2 * pair + 1] = a[r][1];
    if (pair == 0) out[D] = ml[j][0], out[D + 1] = ml[j][1];
  }
}

// out [B, nq, D] (a decode step's [B, 1, nq D]) from the chunks' pieces.
template <class T, int D>
__global__ void __launch_bounds__(D)
    combine(const float* __restrict__ part, T* __restrict__ out, int nq, int chunks) {
  chain_release();
  chain_wait();
  const int64_t head = int64_t(blockIdx.y) * nq + blockIdx.x;
  const float* pc = part + head * chunks * (D + 2);
  float M = -INFINITY;
  for (int c = 0; c < chunks; ++c) M = fmaxf(M, pc[c * (D + 2) + D]);
  float num = 0.f, den = 0.f;
  if (M != -INFINITY)
    for (int c = 0; c < chunks; ++c) {
      const float* x = pc + c * (D + 2);
      if (x[D] == -INFINITY) continue;
      const float w = expf(x[D] - M);
      num = fmaf(w, x[threadIdx.x], num);
      den = fmaf(w, x[D + 1], den);
    }
  out[head * D + threadIdx.x] = Conv<T>::from_float(den > 0.f ? num / den : 0.f);
}

}  // namespace

int64_t decode_attention_chunks(int64_t capacity) {
  return (capacity + kKeys - 1) / kKeys;
}

bool decode_attention_fits(int64_t nq, int64_t nkv, int64_t d) {
  return (d == 64 || d == 128) && nkv > 0 && nq % nkv == 0 && nq / nkv <= kMaxGroup;
}

void decode_attention(Dtype t, const void* q, const void* kc, const void* vc, const void* mask,
                      float* part, void* out, int64_t B, int64_t nq, int64_t nkv, int64_t C,
                      int64_t d, void* stream) {
  if (t == Dtype::F32 || !decode_attention_fits(nq, nkv, d))
    throw std::runtime_error("decode_attention: takes bf16/fp16, d 64 or 128, nq / nkv <= 8");
  const auto s = static_cast<cudaStream_t>(stream);
  const int chunks = static_cast<int>(decode_attention_chunks(C));
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  dispatch(t, [&](auto tag) {
    using E = decltype(tag);
    if constexpr (!std::is_same_v<E, float>) {
      auto go = [&](auto dim) {
        constexpr int D = decltype(dim)::value;
        launch_chained("decode_attention", attend_chunk<E, D>,
                       dim3(unsigned(chunks), unsigned(nkv), unsigned(B)), kThreads, 0, s,
                       static_cast<const E*>(q), static_cast<const E*>(kc),
                       static_cast<const E*>(vc), static_cast<const E*>(mask), part, int(nq),
                       int(nkv), C, scale);
        launch_chained("decode_attention", combine<E, D>, dim3(unsigned(nq), unsigned(B)), D, 0, s,
                       static_cast<const float*>(part), static_cast<E*>(out), int(nq), chunks);
      };
      if (d == 64)
        go(std::integral_constant<int, 64>{});
      else
        go(std::integral_constant<int, 128>{});
    }
  });
}

}  // namespace kldq::kernels::cuda
