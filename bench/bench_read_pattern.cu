// Read-pattern bound of the fused GEMV (gemv_mma.cuh): the same grid, block widths and per-warp
// loads as the tensor-core kernel at one activation row, with the decoding and the MMAs left
// out, so that what the loads alone reach can be set against the full kernel's rate and the
// device's copy bandwidth measured in the same process. Standalone (CUDA runtime only):
//   target kldq_bench_read_pattern, or alone:
//   nvcc -std=c++17 -O3 -arch=sm_90 bench/bench_read_pattern.cu -o bench_read_pattern
// Prints one JSON line per (shape, variant): us per call and GB/s of code bytes.
//
// Tiled variant, thread (g = lane / 4, t = lane % 4) of warp w, block b (16-row tile):
//   segment s = w, w + warps, ...:  rows 16b + g and 16b + 8 + g, bytes 64 s + 16 t .. + 15
//   (4-bit codes: 16 bytes = 32 weights), and with x: 4 x 16 bytes of a bf16 activation row
// Contiguous variant: the same number of 16-byte loads per warp, but lane l of the warp reads
// bytes 512 k + 16 l of the tile's 16-row block (each load one whole 512-byte run).
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda_bench.cuh"

__device__ inline uint32_t fold(uint4 v) {
  return v.x ^ v.y ^ v.z ^ v.w;
}

// kU segments' loads issued before any is consumed (the kernel's segment_unroll); the fold
// stands in for decoding, and the xor'ed result is written only if impossible, so nothing is
// optimised away.
template <int kWarps, int kU, bool kX, bool kContig>
__global__ void __launch_bounds__(32 * kWarps)
    read_tiles(const uint8_t* __restrict__ codes, int64_t row_bytes, const uint4* __restrict__ x,
               uint32_t* __restrict__ out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const uint8_t* tile = codes + int64_t(blockIdx.x) * 16 * row_bytes;
  const uint32_t segments = row_bytes / 64;
  uint32_t acc = 0;
  for (uint32_t s0 = warp; s0 < segments; s0 += kWarps * kU) {
    uint4 lo[kU], hi[kU], xv[kU][4];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const uint32_t s = s0 + u * kWarps;
      const bool ok = s < segments;
      int64_t a_lo, a_hi;
      if (kContig) {  // the tile's 16 x row_bytes bytes as one run: 1 KB per segment
        a_lo = int64_t(s) * 1024 + 16 * lane;
        a_hi = a_lo + 512;
      } else {
        a_lo = g * row_bytes + 64 * s + 16 * t;
        a_hi = a_lo + 8 * row_bytes;
      }
      lo[u] = ok ? *reinterpret_cast<const uint4*>(tile + a_lo) : make_uint4(0, 0, 0, 0);
      hi[u] = ok ? *reinterpret_cast<const uint4*>(tile + a_hi) : make_uint4(0, 0, 0, 0);
      if (kX)
#pragma unroll
        for (int k = 0; k < 4; ++k)
          xv[u][k] = ok ? x[(s * 16 + 4 * t) + k] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      acc ^= fold(lo[u]) ^ fold(hi[u]);
      if (kX)
#pragma unroll
        for (int k = 0; k < 4; ++k) acc += fold(xv[u][k]);
    }
  }
  if (acc == 0x9e3779b9u) out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

struct Shape {
  const char* name;
  int64_t rows, cols;  // weight [rows, cols], 4-bit codes: cols / 2 bytes a row
};

template <int kWarps, int kU, bool kX, bool kContig>
double time_us(const std::vector<uint8_t*>& copies, const Shape& s, const uint4* x, uint32_t* out,
               int iters) {
  const int64_t row_bytes = s.cols / 2, tiles = s.rows / 16;
  auto calls = [&](int n) {  // a different copy each call: no L2 reuse between calls
    for (int i = 0; i < n; ++i)
      read_tiles<kWarps, kU, kX, kContig>
          <<<tiles, 32 * kWarps>>>(copies[i % copies.size()], row_bytes, x, out);
  };
  calls(3);
  return 1e3 * elapsed_ms([&] { calls(iters); }) / iters;
}

template <int kWarps>
void run_shape(const Shape& s, const uint4* x, uint32_t* out, double copy) {
  const int64_t bytes = s.rows * s.cols / 2;
  std::vector<uint8_t*> copies((int64_t(512) << 20) / bytes + 2);  // > 512 MB: past any L2
  for (auto& c : copies) {
    CHECK(cudaMalloc(&c, bytes));
    CHECK(cudaMemset(c, 0x5a, bytes));
  }
  auto report = [&](const char* variant, double us) {
    const double gbps = bytes / (us / 1e6) / 1e9;
    std::printf(
        "{\"shape\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"warps\":%d,\"variant\":\"%s\",\"us\":%.2f,"
        "\"GBps\":%.1f,\"ratio_to_copy\":%.3f}\n",
        s.name, (long long)s.rows, (long long)s.cols, kWarps, variant, us, gbps, gbps / copy);
  };
  const int iters = 300;
  report("tiled_u1", time_us<kWarps, 1, false, false>(copies, s, x, out, iters));
  report("tiled_u2", time_us<kWarps, 2, false, false>(copies, s, x, out, iters));
  report("tiled_u4", time_us<kWarps, 4, false, false>(copies, s, x, out, iters));
  report("tiled_u2_x", time_us<kWarps, 2, true, false>(copies, s, x, out, iters));
  report("contig_u2", time_us<kWarps, 2, false, true>(copies, s, x, out, iters));
  report("contig_u4", time_us<kWarps, 4, false, true>(copies, s, x, out, iters));
  for (auto c : copies) CHECK(cudaFree(c));
}

int main() {
  const double copy = copy_gbps();
  cudaDeviceProp p{};
  CHECK(cudaGetDeviceProperties(&p, 0));
  std::printf("{\"device\":\"%s\",\"sms\":%d,\"copy_GBps\":%.1f}\n", p.name, p.multiProcessorCount,
              copy);
  uint4* x;
  uint32_t* out;
  CHECK(cudaMalloc(&x, 1 << 20));
  CHECK(cudaMemset(x, 1, 1 << 20));
  CHECK(cudaMalloc(&out, 1 << 26));
  // Qwen2.5-7B's decode products; block widths as gemv_mma.cuh chooses them (16 warps when
  // there are fewer than 4 tiles per SM), plus the other width for the two large ones.
  const Shape qkv{"qkv", 4608, 3584}, o{"o", 3584, 3584}, gate_up{"gate_up", 37888, 3584},
      down{"down", 3584, 18944};
  run_shape<16>(qkv, x, out, copy);
  run_shape<16>(o, x, out, copy);
  run_shape<4>(gate_up, x, out, copy);
  run_shape<16>(gate_up, x, out, copy);
  run_shape<16>(down, x, out, copy);
  run_shape<4>(down, x, out, copy);
  return 0;
}
