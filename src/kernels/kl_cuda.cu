// Fused per-token KL divergence, NLLs and top-1 agreement over a full vocabulary: one block per
// row, one pass over the two rows of logits (read as stored, 16-bit or fp32), no [rows, vocab]
// intermediate. Replaces five fp32 passes of ATen ops (two log-softmaxes, exp, difference,
// product-sum) that write and re-read 4 bytes per logit.
//
// Per thread, online over its elements, a vector (16 bytes of each row) at a time: for q, the
// running max m_q and s_q = sum exp(z_q - m_q); for r the same, and a_r = sum exp(z_r - m_r)
// (z_r - z_q), rescaled with s_r whenever m_r grows; the first argmax of each row. A vector's
// terms are summed in fp32 (at most 8 of them, each already an fp32 exp), the running sums are
// kept in double: per-element double arithmetic made the kernel arithmetic-bound at a third of
// the memory bandwidth, and 8-term fp32 partials add rounding no larger than the exps' own
// (random, about 1e-7 of a term, so it averages out over a row).
// Block reduction merges them; then
//   lse = m + log s,  KL = a_r / s_r - (lse_r - lse_q).
// a_r and s_r always carry the same rescaling factors, so their ratio is the p-weighted mean of
// z_r - z_q without the factors' rounding; identical rows give exactly 0 (a_r = 0, lse_r = lse_q),
// and an error in lse shifts KL by about the same error (1e-7 absolute, not relative to the
// logits' size as with fp32 log-probabilities). One read of each row: the kernel is bound by
// that traffic (two 16-bit rows of 152k logits per token for Qwen).
#include <cfloat>
#include <cmath>

#include "cuda_common.cuh"
#include "kl_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

constexpr int kThreads = 256;
// exp(x) as 2^(x log2 e): the hardware's 2^x (relative error about 2^-22) and one product, half
// the instructions of the accurate expf; the product's rounding moves a term by about 1e-7 of
// itself where it matters (x within a few units of the max), like expf's own ulp.
constexpr float kLog2e = 1.4426950408889634f;

struct Soft {  // running max m, sum of exp(z - m), and a = sum exp(z - m) d for a per-element d
  float m = -INFINITY;
  double s = 0, a = 0;
  // Adds the N elements z[k], zmax their maximum; with `other`, d = z - other (z_r - z_q in
  // fp32: exact for bf16 logits within a factor 2^15 of each other, fp16 ones within 2^12,
  // rounded otherwise; +inf where only q is masked, so KL is infinite).
  template <int N>
  __device__ void add(const float (&z)[N], float zmax, const float* other) {
    if (zmax == -INFINITY) return;  // all masked: probability 0 (and no -inf - -inf NaN)
    if (zmax > m) {
      const double f = static_cast<double>(expf(m - zmax));  // 0 while m is still -inf
      s *= f, a *= f, m = zmax;
    }
    float ps = 0.f, pa = 0.f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float e = exp2f((z[k] - m) * kLog2e);
      ps += e;
      if (other && z[k] != -INFINITY) pa += e * (z[k] - other[k]);
    }
    s += ps, a += pa;
  }
  __device__ void merge(const Soft& o) {
    if (o.m == -INFINITY) return;
    if (o.m > m) {
      const double f = static_cast<double>(expf(m - o.m));
      s = s * f + o.s, a = a * f + o.a, m = o.m;
    } else {
      const double f = static_cast<double>(expf(o.m - m));
      s += o.s * f, a += o.a * f;
    }
  }
};

struct Best {  // first argmax
  float v = -INFINITY;
  int64_t i = INT64_MAX;
  // Elements base .. base + N - 1, after every smaller index of this thread; zmax their maximum.
  template <int N>
  __device__ void add(const float (&z)[N], float zmax, int64_t base) {
    if (!(zmax > v)) return;  // a tie keeps the earlier index
#pragma unroll
    for (int k = 0; k < N; ++k)
      if (z[k] == zmax) {
        v = zmax, i = base + k;
        return;
      }
  }
};

// Calls f(zq, zr, qmax, rmax, base) for this thread's elements of the two rows, a vector of N
// (16 bytes) or a single element at a time, in increasing index order.
template <class T, bool VEC, class F>
__device__ void for_row(const T* q, const T* r, int64_t vocab, F&& f) {
  if constexpr (VEC) {
    constexpr int N = 16 / sizeof(T);
    for (int64_t base = int64_t(threadIdx.x) * N; base < vocab; base += int64_t(kThreads) * N) {
      const Pack<T, N> pq = load_pack<T, N>(q + base), pr = load_pack<T, N>(r + base);
      float zq[N], zr[N];
      float mq = -INFINITY, mr = -INFINITY;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        zq[k] = Conv<T>::to_float(pq.e[k]), zr[k] = Conv<T>::to_float(pr.e[k]);
        mq = fmaxf(mq, zq[k]), mr = fmaxf(mr, zr[k]);
      }
      f(zq, zr, mq, mr, base);
    }
  } else {
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      const float zq[1] = {Conv<T>::to_float(q[i])}, zr[1] = {Conv<T>::to_float(r[i])};
      f(zq, zr, zq[0], zr[0], i);
    }
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
  const int64_t row = blockIdx.x;
  const T* q = q_all + row * vocab;
  const T* r = r_all + row * vocab;

  Soft sq, sr;
  Best bq, br;
  for_row<T, VEC>(q, r, vocab, [&](const auto& zq, const auto& zr, float mq, float mr, int64_t i) {
    sq.add(zq, mq, nullptr), sr.add(zr, mr, zq), bq.add(zq, mq, i), br.add(zr, mr, i);
  });
  auto merge_soft = [](Soft& a, const Soft& b) { a.merge(b); };
  auto merge_best = [](Best& a, const Best& b) {
    if (b.v > a.v || (b.v == a.v && b.i < a.i)) a = b;
  };
  sq = block_reduce(sq, soft, merge_soft);
  sr = block_reduce(sr, soft, merge_soft);
  bq = block_reduce(bq, best, merge_best);
  br = block_reduce(br, best, merge_best);
  if (threadIdx.x == 0) {
    const double lse_q = double(sq.m) + log(sq.s), lse_r = double(sr.m) + log(sr.s);
    const int64_t t = target[row];
    kl[row] = sr.a / sr.s - (lse_r - lse_q);
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
