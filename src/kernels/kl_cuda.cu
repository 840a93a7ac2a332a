// Fused per-token KL divergence, NLLs and top-1 agreement over a full vocabulary: one block per
// row, two passes over the two rows of logits (read as stored, 16-bit or fp32), no [rows, vocab]
// intermediate. Replaces five fp32 passes of ATen ops (two log-softmaxes, exp, difference,
// product-sum) that write and re-read 4 bytes per logit.
//
// Pass 1: per thread, online max / sum of exp for both rows (sums in double), and the first
//         argmax of each; block reduction -> lse_q, lse_r (double), argmaxes.
// Pass 2: per element p = exp(z_r - lse_r), P += p, A += p * (z_r - z_q) (double accumulators);
//         KL = A - (lse_r - lse_q) * P. Written this way, identical rows give exactly 0, and an
//         error in lse_r shifts KL by about the same error (1e-7 absolute, not relative to the
//         logits' size as with fp32 log-probabilities).
#include <cfloat>
#include <cmath>

#include "cuda_common.cuh"
#include "kl_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

constexpr int kThreads = 256;

struct Soft {  // running max and sum of exp(z - m)
  float m = -INFINITY;
  double s = 0;
  __device__ void add(float z) {
    if (z == -INFINITY) return;  // a masked logit: probability 0 (and no -inf - -inf NaN)
    if (z > m) {
      s = s * static_cast<double>(expf(m - z)) + 1.0;
      m = z;
    } else {
      s += static_cast<double>(expf(z - m));
    }
  }
  __device__ void merge(const Soft& o) {
    if (o.m == -INFINITY) return;
    if (o.m > m) {
      s = s * static_cast<double>(expf(m - o.m)) + o.s;
      m = o.m;
    } else {
      s += o.s * static_cast<double>(expf(o.m - m));
    }
  }
};

struct Best {  // first argmax
  float v = -INFINITY;
  int64_t i = INT64_MAX;
  __device__ void add(float z, int64_t idx) {
    if (z > v || (z == v && idx < i)) v = z, i = idx;
  }
};

// Calls f(zq, zr, index) for this thread's elements of the two rows, in increasing index order.
template <class T, bool VEC, class F>
__device__ void for_row(const T* q, const T* r, int64_t vocab, F&& f) {
  if constexpr (VEC) {
    constexpr int N = 16 / sizeof(T);
    for (int64_t base = int64_t(threadIdx.x) * N; base < vocab; base += int64_t(kThreads) * N) {
      const uint4 rq = *reinterpret_cast<const uint4*>(q + base);
      const uint4 rr = *reinterpret_cast<const uint4*>(r + base);
      const T* eq = reinterpret_cast<const T*>(&rq);
      const T* er = reinterpret_cast<const T*>(&rr);
#pragma unroll
      for (int k = 0; k < N; ++k) f(Conv<T>::to_float(eq[k]), Conv<T>::to_float(er[k]), base + k);
    }
  } else {
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads)
      f(Conv<T>::to_float(q[i]), Conv<T>::to_float(r[i]), i);
  }
}

// Block-wide reduction of one value type through shared memory (kThreads entries).
template <class V, class M>
__device__ V block_reduce(V v, V* shared, M&& merge) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) merge(shared[threadIdx.x], shared[threadIdx.x + stride]);
    __syncthreads();
  }
  const V out = shared[0];
  __syncthreads();
  return out;
}

template <class T, bool VEC>
__global__ void __launch_bounds__(kThreads)
    token_kl_kernel(const T* __restrict__ q_all, const T* __restrict__ r_all,
                    const int64_t* __restrict__ target, int64_t vocab, double* kl, double* nll_q,
                    double* nll_r, uint8_t* same) {
  __shared__ Soft soft[kThreads];
  __shared__ Best best[kThreads];
  __shared__ double acc[kThreads];
  const int64_t row = blockIdx.x;
  const T* q = q_all + row * vocab;
  const T* r = r_all + row * vocab;

  Soft sq, sr;
  Best bq, br;
  for_row<T, VEC>(q, r, vocab, [&](float zq, float zr, int64_t i) {
    sq.add(zq), sr.add(zr), bq.add(zq, i), br.add(zr, i);
  });
  auto merge_soft = [](Soft& a, const Soft& b) { a.merge(b); };
  auto merge_best = [](Best& a, const Best& b) {
    if (b.v > a.v || (b.v == a.v && b.i < a.i)) a = b;
  };
  sq = block_reduce(sq, soft, merge_soft);
  sr = block_reduce(sr, soft, merge_soft);
  bq = block_reduce(bq, best, merge_best);
  br = block_reduce(br, best, merge_best);
  const double lse_q = double(sq.m) + log(sq.s), lse_r = double(sr.m) + log(sr.s);

  double p_sum = 0, pd_sum = 0;
  for_row<T, VEC>(q, r, vocab, [&](float zq, float zr, int64_t) {
    if (zr == -INFINITY) return;  // p = 0; skipping also avoids 0 * (-inf - -inf)
    const double p = static_cast<double>(expf(static_cast<float>(double(zr) - lse_r)));
    p_sum += p;
    pd_sum += p * static_cast<double>(zr - zq);
  });
  auto add = [](double& a, const double& b) { a += b; };
  p_sum = block_reduce(p_sum, acc, add);
  pd_sum = block_reduce(pd_sum, acc, add);
  if (threadIdx.x == 0) {
    const int64_t t = target[row];
    kl[row] = pd_sum - (lse_r - lse_q) * p_sum;
    nll_q[row] = lse_q - double(Conv<T>::to_float(q[t]));
    nll_r[row] = lse_r - double(Conv<T>::to_float(r[t]));
    same[row] = bq.i == br.i;
  }
}

}  // namespace

void token_kl(Dtype t, const void* q, const void* r, const int64_t* target, int64_t rows,
              int64_t vocab, double* kl, double* nll_q, double* nll_r, uint8_t* same_top1, bool vec,
              void* stream) {
  if (rows == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  dispatch(t, [&](auto zero) {
    using T = decltype(zero);
    const T* qt = static_cast<const T*>(q);
    const T* rt = static_cast<const T*>(r);
    if (vec)
      token_kl_kernel<T, true>
          <<<unsigned(rows), kThreads, 0, s>>>(qt, rt, target, vocab, kl, nll_q, nll_r, same_top1);
    else
      token_kl_kernel<T, false>
          <<<unsigned(rows), kThreads, 0, s>>>(qt, rt, target, vocab, kl, nll_q, nll_r, same_top1);
  });
  check_launch("token_kl");
}

}  // namespace kldq::kernels::cuda
