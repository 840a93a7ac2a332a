// CUDA kernels for the decoder's elementwise work, RMSNorm (+ residual add) and SwiGLU, and the
// switch of chained launches (cuda_common.cuh); rotate-half RoPE (alone, or with a decode step's
// K/V cache append) is in rope_cuda.cu. Each kernel reproduces transformers' operation sequence
// rounding for rounding: every intermediate that PyTorch materialises as a tensor of dtype T is
// rounded to T here too, and products use __fmul_rn/__fadd_rn so the compiler cannot contract
// them into FMAs that PyTorch's separate kernels would not perform. One pass over memory instead
// of 5-8 kernels each. Each kernel has a vector form (8 or 16 bytes per load and store, no
// integer division per element) taken when the shapes and pointers allow it, with the same
// arithmetic per element as the scalar form; on the 1.5B profile the scalar forms ran at a third
// of the memory bandwidth.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda_common.cuh"
#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

// Sum of squares of one row in exactly the order PyTorch's CUDA reduction kernel
// (ATen/native/cuda/Reduce.cuh, torch 2.11) sums x.float().pow(2) for mean(-1) over a contiguous
// fp32 tensor with rows of h % 4 == 0 elements, 128 <= h < 8192: `width` threads share a row
// (width = ReduceConfig::block_width, which depends on h and the number of rows); each keeps 4
// accumulators fed by 16-byte vectors v = lane, lane + width, ..., combined ((a0+a1)+a2)+a3;
// then a shared-memory tree down to 32 lanes and shfl_down with offsets 16, 8, 4, 2, 1.
// Matching that order makes the norm bit-identical to transformers' on the GPU; other shapes
// get the same arithmetic with a different summation order (an ulp of rstd at most).
//
//   row (fp32 view):  | v0: x0..x3 | v1: x4..x7 | ... |      lane l takes v_l, v_{l+width}, ...
template <class T, bool VEC>
__device__ float row_sum_squares(const T* __restrict__ xr, const T* __restrict__ delta,
                                 T* __restrict__ sum, int64_t h, int width, float* shared) {
  const int lane = threadIdx.x;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if constexpr (VEC) {
    // h % 4 == 0: vector v is one 4-element load (and, with delta, one store of the sum)
#pragma unroll 4
    for (int64_t v = lane; v * 4 < h; v += width) {
      Pack<T, 4> xv = load_pack<T, 4>(xr + v * 4);
      if (delta) {
        const Pack<T, 4> dv = load_pack<T, 4>(delta + v * 4);
#pragma unroll
        for (int k = 0; k < 4; ++k)
          xv.e[k] = Conv<T>::from_float(
              __fadd_rn(Conv<T>::to_float(xv.e[k]), Conv<T>::to_float(dv.e[k])));
        store_pack<T, 4>(sum + v * 4, xv);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float f = Conv<T>::to_float(xv.e[k]);
        acc[k] = __fadd_rn(acc[k], __fmul_rn(f, f));
      }
    }
  } else {
    auto square = [&](int64_t i) {
      float v = Conv<T>::to_float(xr[i]);
      if (delta) {
        const T s = Conv<T>::from_float(__fadd_rn(v, Conv<T>::to_float(delta[i])));
        sum[i] = s;
        v = Conv<T>::to_float(s);
      }
      return __fmul_rn(v, v);
    };
    for (int64_t v = lane; v * 4 + 3 < h; v += width)
      for (int k = 0; k < 4; ++k) acc[k] = __fadd_rn(acc[k], square(v * 4 + k));
    const int64_t tail = h - h % 4 + lane;
    if (tail < h) acc[0] = __fadd_rn(acc[0], square(tail));
  }
  float value = __fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[1]), acc[2]), acc[3]);
  float* mine = shared + threadIdx.y * width;
  if (width > 32) {
    mine[lane] = value;
    for (int offset = width / 2; offset >= 32; offset >>= 1) {
      __syncthreads();
      if (lane < offset) {
        value = __fadd_rn(value, mine[lane + offset]);
        mine[lane] = value;
      }
    }
  }
  __syncthreads();
  for (int offset = 16; offset > 0; offset >>= 1)
    value = __fadd_rn(value, __shfl_down_sync(0xffffffffu, value, offset));
  if (lane == 0) mine[0] = value;
  __syncthreads();
  return mine[0];
}

// blockDim = (width, rows per block); one row per threadIdx.y.
//   [delta != nullptr]  s = T(x + delta) is written to `sum` and normalised
//   normed = T(s * rsqrt(sum(s^2) * factor + eps)),  out = T(weight * normed)
// factor is PyTorch's mean factor, float(rows) / float(rows * h). In the vector form each thread
// normalises the vectors it summed (and wrote), so it re-reads only its own writes, through L2
// (load_pack_written: not the read-only path, which the __restrict__ pointers would allow).
template <class T, bool VEC>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ delta,
                                T* __restrict__ sum, const T* __restrict__ weight,
                                T* __restrict__ out, int64_t rows, int64_t h, float factor,
                                float eps) {
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
  extern __shared__ float shared[];
  const int width = blockDim.x;
  const int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  const int64_t r = active ? row : rows - 1;  // inactive rows redo the last row, writing nothing
  const T* xr = x + r * h;
  float total = row_sum_squares<T, VEC>(xr, delta && active ? delta + r * h : nullptr,
                                        sum ? sum + r * h : nullptr, h, width, shared);
  if (!active) return;
  const float rstd = rsqrtf(__fadd_rn(__fmul_rn(total, factor), eps));
  const T* src = delta ? sum + r * h : xr;
  auto scale = [&](T s, T w) {
    const float normed = round_to<T>(__fmul_rn(Conv<T>::to_float(s), rstd));
    return Conv<T>::from_float(__fmul_rn(Conv<T>::to_float(w), normed));
  };
  if constexpr (VEC) {
#pragma unroll 4
    for (int64_t v = threadIdx.x; v * 4 < h; v += width) {
      const Pack<T, 4> sv =
          delta ? load_pack_written<T, 4>(src + v * 4) : load_pack<T, 4>(src + v * 4);
      const Pack<T, 4> wv = load_pack<T, 4>(weight + v * 4);
      Pack<T, 4> o;
#pragma unroll
      for (int k = 0; k < 4; ++k) o.e[k] = scale(sv.e[k], wv.e[k]);
      store_pack<T, 4>(out + r * h + v * 4, o);
    }
  } else {
    for (int64_t i = threadIdx.x; i < h; i += width)
      out[r * h + i] = scale(delta ? __ldcg(src + i) : src[i], weight[i]);
  }
}

// Row r of gate and up starts at gate + r * rs and up + r * rs (a fused gate_up output:
// up = gate + i, rs = 2 i; separate outputs: rs = i)  ->  out row [i]
template <class T>
__global__ void silu_mul_kernel(const T* __restrict__ gate, const T* __restrict__ up,
                                T* __restrict__ out, int64_t rows, int64_t i, int64_t rs) {
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
  const int64_t total = rows * i;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / i, c = idx % i;
    out[idx] =
        silu_times<T>(Conv<T>::to_float(gate[r * rs + c]), Conv<T>::to_float(up[r * rs + c]));
  }
}

// Vector form (i % N == 0): thread x of the grid takes vector x of rows blockIdx.y + k gridDim.y,
// two rows per step with both rows' loads issued before either is computed; no division per
// element.
template <class T, int N>
__global__ void silu_mul_vec_kernel(const T* __restrict__ gate, const T* __restrict__ up,
                                    T* __restrict__ out, int64_t rows, int64_t i, int64_t rs) {
  chain_release();  // launched chained (cuda_common.cuh): wait before any memory access
  chain_wait();
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * N;
  if (c >= i) return;
  auto apply = [&](int64_t r, const Pack<T, N>& g, const Pack<T, N>& u) {
    Pack<T, N> o;
#pragma unroll
    for (int k = 0; k < N; ++k)
      o.e[k] = silu_times<T>(Conv<T>::to_float(g.e[k]), Conv<T>::to_float(u.e[k]));
    store_pack<T, N>(out + r * i + c, o);
  };
  for (int64_t r = blockIdx.y; r < rows; r += 2 * int64_t(gridDim.y)) {
    const int64_t r2 = r + gridDim.y;
    const Pack<T, N> g = load_pack<T, N>(gate + r * rs + c), u = load_pack<T, N>(up + r * rs + c);
    Pack<T, N> g2{}, u2{};
    if (r2 < rows) g2 = load_pack<T, N>(gate + r2 * rs + c), u2 = load_pack<T, N>(up + r2 * rs + c);
    apply(r, g, u);
    if (r2 < rows) apply(r2, g2, u2);
  }
}

// launch_chained's switch: unset (-1) until the first launch reads KLDQ_PDL.
std::atomic<int> chain_state{-1};

}  // namespace

bool chaining() {
  int on = chain_state.load();
  if (on < 0) {
    const char* env = std::getenv("KLDQ_PDL");
    const std::string v = env ? env : "1";
    if (v != "0" && v != "1")
      throw std::runtime_error("KLDQ_PDL must be 0 or 1 (chained kernel launches), not '" + v +
                               "'");
    on = v == "1";
    chain_state.store(on);
  }
  if (!on) return false;
  // The device must support it and run code built for it: kernels JIT-compiled from older PTX
  // (a build for 8.x run on a 9.0 device) have no chain_wait, and chained they would race.
  static const bool supported = [] {
    int dev = 0, major = 0;
    cudaFuncAttributes f{};
    const bool ok =
        cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaFuncGetAttributes(&f, rms_norm_kernel<float, false>) == cudaSuccess;
    cudaGetLastError();  // a failed query leaves no error for the next launch check
    return ok && major >= 9 && f.ptxVersion >= 90;
  }();
  return supported;
}

void set_chaining(bool on) {
  chain_state.store(on ? 1 : 0);
}

// ReduceConfig::set_block_dimension for a contiguous fp32 reduction of `rows` rows of h:
// inputs are vectorised by 4 when h >= 128, and at most 512 threads run per block.
int reduce_block_width(int64_t rows, int64_t h) {
  auto last_pow2 = [](int64_t n) {
    int64_t p = 1;
    while (p * 2 <= n) p *= 2;
    return p;
  };
  const int64_t dim0 = h >= 128 ? h / 4 : h;
  const int64_t dim0_pow2 = dim0 < 512 ? last_pow2(dim0) : 512;
  const int64_t dim1_pow2 = rows < 512 ? last_pow2(rows) : 512;
  const int64_t height = std::min<int64_t>(dim1_pow2, 512 / std::min<int64_t>(dim0_pow2, 32));
  return static_cast<int>(std::max<int64_t>(32, std::min<int64_t>(dim0_pow2, 512 / height)));
}

void rms_norm(Dtype t, const void* x, const void* delta, void* sum, const void* weight, void* out,
              int64_t rows, int64_t h, float eps, void* stream) {
  if (rows == 0) return;
  const int width = reduce_block_width(rows, h);
  const int per_block = std::max(1, 256 / width);
  const dim3 block(width, per_block);
  const unsigned grid = static_cast<unsigned>((rows + per_block - 1) / per_block);
  const size_t shared = sizeof(float) * width * per_block;
  const float factor = static_cast<float>(rows) / static_cast<float>(rows * h);
  const int64_t vbytes = 4 * element_size(t);
  const bool vec = h % 4 == 0 && aligned(x, vbytes) && aligned(weight, vbytes) &&
                   aligned(out, vbytes) &&
                   (!delta || (aligned(delta, vbytes) && aligned(sum, vbytes)));
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    auto kernel = vec ? rms_norm_kernel<T, true> : rms_norm_kernel<T, false>;
    launch_chained("rms_norm", kernel, grid, block, shared, static_cast<cudaStream_t>(stream),
                   static_cast<const T*>(x), static_cast<const T*>(delta), static_cast<T*>(sum),
                   static_cast<const T*>(weight), static_cast<T*>(out), rows, h, factor, eps);
  });
}

void silu_mul(Dtype t, const void* gate, const void* up, void* out, int64_t rows, int64_t i,
              int64_t rs, void* stream) {
  if (rows * i == 0) return;
  const int64_t N = 16 / element_size(t);
  const bool vec =
      i % N == 0 && rs % N == 0 && aligned(gate, 16) && aligned(up, 16) && aligned(out, 16);
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch(t, [&](auto tag) {
    using E = decltype(tag);
    if (vec) {
      constexpr int V = 16 / sizeof(E), kThreads = 128;
      // grid.y covers up to 1024 rows; each thread loops over the rows beyond, two at a time.
      const dim3 grid(static_cast<unsigned>((i / V + kThreads - 1) / kThreads),
                      static_cast<unsigned>(std::min<int64_t>(rows, 1024)));
      launch_chained("silu_mul", silu_mul_vec_kernel<E, V>, grid, kThreads, 0, s,
                     static_cast<const E*>(gate), static_cast<const E*>(up), static_cast<E*>(out),
                     rows, i, rs);
    } else {
      launch_chained("silu_mul", silu_mul_kernel<E>, grid_for(rows * i, 256), 256, 0, s,
                     static_cast<const E*>(gate), static_cast<const E*>(up), static_cast<E*>(out),
                     rows, i, rs);
    }
  });
}

}  // namespace kldq::kernels::cuda
