// One decode step's attention over a KV cache (kernels::decode_attention): the RoPE of the step's
// q and k, the append of k and v at the step's column, and softmax(q K^T / sqrt(d)) V over each
// row's visible columns, in one kernel (rope_append, then SDPA over every capacity column).
//
//   grid (S, nkv, B), 128 threads. Block (s, g, b) takes the cache columns [s w, (s + 1) w)
//   (w = ceil(C / S)) that row b sees, [lo, c] (c = cols[0], lo = pad[b]; a pad column c < pad
//   sees itself alone), for kv head g and its G = nq / nkv query heads h:
//     tiles of 128 columns, thread t <-> column j:   s_h = dot(q_h, K[j]) * scale   (fp32)
//     online softmax per head over the block's tiles (running max m_h, sum l_h)
//     thread e <-> element e of the head (d = 128):   acc_h[e] = sum_j p_h[j] V[j][e]
//   S > 1: every block leaves (m_h, l_h, acc_h) in a workspace and the last of (b, g)'s blocks
//   to finish (a counter per (b, g), which that block sets back to 0) combines them in split
//   order, so the sums do not depend on which block finishes last.
// Column c is the step's own: the one block that covers it, c / w, takes the rotated k and the v
// from shared memory and writes them into the caches, so no block reads a column this kernel
// writes. Numerics: q and k rounded to T after RoPE (rope's formula, rotate_pair), the
// scores, softmax and P.V in fp32, the output rounded to T once. SDPA's backends round at other
// places (cuDNN rounds P to T before P.V), so the two agree to about an ulp of T, not bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cuda_common.cuh"
#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

constexpr int kD = 128, kThreads = 128, kWarps = kThreads / 32;

// Shared state of a block: the rotated q of its G heads and the step's k and v (fp32 copies of
// T values), a tile's probabilities, and the warps' partial maxima and sums.
template <int G>
struct Smem {
  float q[G][kD], k[kD], v[kD], p[G][kThreads], red[G][kWarps];
  int last;
};

// Max (max = true) or sum of v over the block, per head: a warp shuffle tree, then the warps'
// values in warp order (a fixed order: the same sums on every run).
template <int G, bool kMax>
__device__ inline void block_reduce(Smem<G>& sm, float (&v)[G], float (&out)[G]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int h = 0; h < G; ++h) {
    float x = v[h];
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      const float y = __shfl_xor_sync(0xffffffffu, x, o);
      x = kMax ? fmaxf(x, y) : x + y;
    }
    if (lane == 0) sm.red[h][warp] = x;
  }
  __syncthreads();
#pragma unroll
  for (int h = 0; h < G; ++h) {
    float x = sm.red[h][0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) x = kMax ? fmaxf(x, sm.red[h][w]) : x + sm.red[h][w];
    out[h] = x;
  }
  __syncthreads();  // red is reused by the next reduction
}

// q of the group's heads and the step's k rotated (rotate_pair: rope's rounding), v copied, all
// into shared memory as floats; the block owning column c also appends k and v to the caches.
template <class T, int G>
__device__ inline void load_step(const DecodeAttention& a, Smem<G>& sm, int64_t b, int64_t g,
                                 bool owner, int64_t c) {
  const T* cos = static_cast<const T*>(a.cos) + b * kD;
  const T* sin = static_cast<const T*>(a.sin) + b * kD;
  const T* q = static_cast<const T*>(a.q.x) + b * a.q.sb + g * G * kD;
  const T* k = static_cast<const T*>(a.k.x) + b * a.k.sb + g * kD;
  const T* v = static_cast<const T*>(a.v.x) + b * a.v.sb + g * kD;
  const int64_t at = ((b * a.nkv + g) * a.capacity + c) * kD;  // column c of head g, row b
  constexpr int half = kD / 2;
  for (int idx = threadIdx.x; idx < (G + 1) * half; idx += kThreads) {
    const int h = idx / half, i = idx % half;  // h == G: the step's k
    const T* x = h < G ? q + h * kD : k;
    T lo, hi;
    rotate_pair<T>(x[i], x[i + half], cos[i], cos[i + half], sin[i], sin[i + half], lo, hi);
    float* dst = h < G ? sm.q[h] : sm.k;
    dst[i] = Conv<T>::to_float(lo);
    dst[i + half] = Conv<T>::to_float(hi);
    if (h == G && owner) {
      static_cast<T*>(a.kc)[at + i] = lo;
      static_cast<T*>(a.kc)[at + i + half] = hi;
    }
  }
  for (int e = threadIdx.x; e < kD; e += kThreads) {
    sm.v[e] = Conv<T>::to_float(v[e]);
    if (owner) static_cast<T*>(a.vc)[at + e] = v[e];
  }
  __syncthreads();
}

// s_h = dot(q_h, K[j]) * scale for this thread's column j (from the cache, or the step's own k).
template <class T, int G>
__device__ inline void scores(const Smem<G>& sm, const T* krow, bool own, float scale,
                              float (&s)[G]) {
  constexpr int N = 16 / sizeof(T);
#pragma unroll
  for (int h = 0; h < G; ++h) s[h] = 0.f;
#pragma unroll 2
  for (int e0 = 0; e0 < kD; e0 += N) {
    Pack<T, N> kv;
    if (!own) kv = load_pack<T, N>(krow + e0);
#pragma unroll
    for (int n = 0; n < N; ++n) {
      const float kf = own ? sm.k[e0 + n] : Conv<T>::to_float(kv.e[n]);
#pragma unroll
      for (int h = 0; h < G; ++h) s[h] = fmaf(sm.q[h][e0 + n], kf, s[h]);
    }
  }
#pragma unroll
  for (int h = 0; h < G; ++h) s[h] *= scale;
}

// The block's running softmax per head: max m, sum l, and this thread's element of P.V.
template <int G>
struct Running {
  float m[G], l[G], acc[G];
};

// Columns j0 .. min(j0 + 127, hi) of kv head g's caches kc, vc [capacity, d] (column c: the
// step's own k, v in shared memory) into the running softmax r.
template <class T, int G>
__device__ inline void attend_tile(Smem<G>& sm, const T* kc, const T* vc, int64_t j0, int64_t hi,
                                   int64_t c, float scale, Running<G>& r) {
  const int t = threadIdx.x;
  const int64_t j = j0 + t;
  const bool valid = j <= hi;
  float sc[G], top[G], sum[G], corr[G];
  scores<T, G>(sm, kc + (valid ? j : j0) * kD, j == c, scale, sc);
#pragma unroll
  for (int h = 0; h < G; ++h) sc[h] = valid ? sc[h] : -INFINITY;
  block_reduce<G, true>(sm, sc, top);
#pragma unroll
  for (int h = 0; h < G; ++h) {
    const float mn = fmaxf(r.m[h], top[h]);
    corr[h] = expf(r.m[h] - mn);  // 0 on the first tile (m = -inf)
    r.m[h] = mn;
    sc[h] = valid ? expf(sc[h] - mn) : 0.f;
    sm.p[h][t] = sc[h];
  }
  block_reduce<G, false>(sm, sc, sum);  // its barriers order the p stores before the reads below
#pragma unroll
  for (int h = 0; h < G; ++h) r.l[h] = r.l[h] * corr[h] + sum[h], r.acc[h] *= corr[h];
  const int n = static_cast<int>(hi - j0 + 1 < kThreads ? hi - j0 + 1 : kThreads);
#pragma unroll 4
  for (int i = 0; i < n; ++i) {
    const float vf = j0 + i == c ? sm.v[t] : Conv<T>::to_float(vc[(j0 + i) * kD + t]);
#pragma unroll
    for (int h = 0; h < G; ++h) r.acc[h] = fmaf(sm.p[h][i], vf, r.acc[h]);
  }
  __syncthreads();  // p is rewritten by the next tile
}

// S > 1: the block's partial (m, l, acc) into ws (acc [B nkv, S, G, d], then (m, l)
// [B nkv, S, G, 2] floats); the last block of pair bg to arrive (count[bg], then set back to 0)
// combines the S partials in split order into out [G, d].
template <class T, int G>
__device__ inline void finish_splits(Smem<G>& sm, const Running<G>& r, float* ws, int* count,
                                     int64_t pairs, int64_t bg, T* out) {
  const int64_t S = gridDim.x, s = blockIdx.x;
  const int t = threadIdx.x;
  float* const acc = ws + bg * S * G * kD;                     // [S, G, d] of pair bg
  float* const ml = ws + pairs * S * G * kD + bg * S * G * 2;  // [S, G, 2]
#pragma unroll
  for (int h = 0; h < G; ++h) {
    acc[(s * G + h) * kD + t] = r.acc[h];
    if (t == 0) ml[(s * G + h) * 2] = r.m[h], ml[(s * G + h) * 2 + 1] = r.l[h];
  }
  __threadfence();  // the partial is visible device-wide before the count says so
  __syncthreads();
  if (t == 0) sm.last = atomicAdd(count + bg, 1) == S - 1;
  __syncthreads();
  if (!sm.last) return;
  __threadfence();
#pragma unroll
  for (int h = 0; h < G; ++h) {
    float top = -INFINITY, sum = 0.f, o = 0.f;
    for (int64_t k = 0; k < S; ++k) top = fmaxf(top, __ldcg(ml + (k * G + h) * 2));
    for (int64_t k = 0; k < S; ++k) {
      const float f = expf(__ldcg(ml + (k * G + h) * 2) - top);  // 0 for an empty split
      sum += __ldcg(ml + (k * G + h) * 2 + 1) * f;
      o += __ldcg(acc + (k * G + h) * kD + t) * f;
    }
    out[h * kD + t] = Conv<T>::from_float(o / sum);
  }
  if (t == 0) count[bg] = 0;  // for the next launch (graph replays included)
}

// One block's attention: see the file's header; ws and count as finish_splits'.
template <class T, int G>
__global__ void __launch_bounds__(kThreads)
    decode_attention_kernel(DecodeAttention a, float* __restrict__ ws, int* __restrict__ count) {
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
  __shared__ Smem<G> sm;
  const int64_t S = gridDim.x, s = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int64_t w = (a.capacity + S - 1) / S, c = a.cols[0], p = a.pad[b];
  if (c < 0 || c >= a.capacity) __trap();  // a column outside the cache: never write there
  const int64_t first = c < p ? c : p, end = (s + 1) * w - 1;
  const int64_t lo = first > s * w ? first : s * w, hi = c < end ? c : end;
  load_step<T, G>(a, sm, b, g, c / w == s, c);
  const int64_t bg = b * a.nkv + g;
  const T* kc = static_cast<const T*>(a.kc) + bg * a.capacity * kD;
  const T* vc = static_cast<const T*>(a.vc) + bg * a.capacity * kD;
  Running<G> r;
#pragma unroll
  for (int h = 0; h < G; ++h) r.m[h] = -INFINITY, r.l[h] = 0.f, r.acc[h] = 0.f;
  for (int64_t j0 = lo; j0 <= hi; j0 += kThreads)
    attend_tile<T, G>(sm, kc, vc, j0, hi, c, a.scale, r);
  T* out = static_cast<T*>(a.out) + b * a.nq * kD + g * G * kD;
  if (S > 1) return finish_splits<T, G>(sm, r, ws, count, a.B * a.nkv, bg, out);
#pragma unroll
  for (int h = 0; h < G; ++h) out[h * kD + threadIdx.x] = Conv<T>::from_float(r.acc[h] / r.l[h]);
}

// The launch for G = nq / nkv, tried from kG down: G is a template argument because the
// per-head registers are unrolled arrays.
template <class T, int kG = 8>
void launch_for_group(const DecodeAttention& a, int S, float* ws, int* count, cudaStream_t s) {
  if (a.nq / a.nkv == kG) {
    launch_chained("decode_attention", decode_attention_kernel<T, kG>,
                   dim3(unsigned(S), unsigned(a.nkv), unsigned(a.B)), kThreads, 0, s, a, ws, count);
  } else if constexpr (kG > 1) {
    launch_for_group<T, kG - 1>(a, S, ws, count, s);
  } else {
    throw std::runtime_error("decode_attention: unsupported group size");
  }
}

}  // namespace

bool decode_attention_fits(Dtype t, const DecodeAttention& a) {
  // The caches' rows are read as 16-byte vectors; q, k and v element by element.
  (void)t;
  return a.d == kD && a.nkv > 0 && a.nq % a.nkv == 0 && a.nq / a.nkv >= 1 && a.nq / a.nkv <= 8 &&
         a.B > 0 && a.B <= 65535 && a.nkv <= 65535 && a.capacity > 0 && aligned(a.kc, 16) &&
         aligned(a.vc, 16);
}

int decode_attention_splits(const DecodeAttention& a) {
  // Enough blocks for about two per multiprocessor, each over at least 32 columns.
  const int64_t pairs = a.B * a.nkv, want = (2 * sm_count() + pairs - 1) / pairs;
  return static_cast<int>(std::max<int64_t>(1, std::min(want, (a.capacity + 31) / 32)));
}

void decode_attention(Dtype t, const DecodeAttention& a, int splits, float* ws, int* count,
                      void* stream) {
  if (!decode_attention_fits(t, a))
    throw std::runtime_error("decode_attention: unsupported operands");
  dispatch(t, [&](auto tag) {
    launch_for_group<decltype(tag)>(a, splits, ws, count, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace kldq::kernels::cuda
