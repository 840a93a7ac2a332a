// Launch floor of a decode step built of one kernel per operation: the time per kernel of a
// CUDA graph of N dependent kernels that do (almost) nothing, launched by kldq's launch_chained
// with programmatic dependent launch on (as decode steps run) and off (cuda_common.cuh).
// A decode step of Qwen2.5 replays about 245 kernels (docs/GPU.md, census), so N x this floor is
// the part of a step's time that no kernel's speed can remove. CUDA runtime and kldq's torch-free
// kernel objects only: target kldq_bench_launch_floor.
// Prints one JSON line per (grid, block, work, chained): us per kernel.
//
// Work: kernel k reads the vector [n] of uint4 that kernel k - 1 wrote and writes its own, so
// each waits for its predecessor's stores (the dependency every decode kernel has); n = the
// grid's threads (one 16-byte load and store each; 1 x 512 threads = one bf16 row of 4096; at
// 288 x 512 a kernel moves 4.7 MB through L2, and those rows measure that traffic too).
#include <cstdint>
#include <cstdio>

#include "cuda_bench.cuh"
#include "cuda_common.cuh"

namespace kc = kldq::kernels::cuda;

template <bool kWork>
__global__ void step(const uint4* __restrict__ in, uint4* __restrict__ out) {
  kc::chain_release();
  kc::chain_wait();
  if (kWork) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    uint4 v = __ldcg(in + i);  // written by the previous kernel: through L2
    v.x += 1;
    out[i] = v;
  }
}

// us per kernel of a graph of 256 launches by kldq's launch_chained, chained or plain,
// replayed 50 times.
double us_per_kernel(int grid, int block, bool work, bool chained, uint4* a, uint4* b) {
  const int n_kernels = 256, reps = 50;
  kc::set_chaining(chained);
  const auto capture = [&](cudaStream_t s) {
    for (int k = 0; k < n_kernels; ++k)
      kc::launch_chained("step", work ? step<true> : step<false>, grid, block, 0, s, k % 2 ? b : a,
                         k % 2 ? a : b);
  };
  return 1e3 * graph_replay_ms(capture, 5, reps) / n_kernels;
}

int main() {
  cudaDeviceProp p{};
  CHECK(cudaGetDeviceProperties(&p, 0));
  std::printf("{\"device\":\"%s\",\"sms\":%d}\n", p.name, p.multiProcessorCount);
  uint4 *a, *b;
  const size_t bytes = size_t(16) << 20;
  CHECK(cudaMalloc(&a, bytes));
  CHECK(cudaMalloc(&b, bytes));
  CHECK(cudaMemset(a, 0, bytes));
  CHECK(cudaMemset(b, 0, bytes));
  CHECK(cudaDeviceSynchronize());  // before the graphs' non-blocking streams read them
  // One block of 512 (a one-row norm), one block per SM, and the grids of the 7B's products
  // (224 and 288 blocks of 512 threads; 1,184 of 128 for gate/up).
  const int shapes[][2] = {
      {1, 512}, {p.multiProcessorCount, 512}, {224, 512}, {288, 512}, {1184, 128}};
  for (const auto& [grid, block] : shapes)
    for (bool work : {false, true})
      for (bool chained : {true, false}) {
        const double us = us_per_kernel(grid, block, work, chained, a, b);
        // "chained": as launched (kc::chaining() stays off where the device cannot chain)
        std::printf(
            "{\"grid\":%d,\"block\":%d,\"work\":%s,\"chained\":%s,\"us_per_kernel\":%.3f}\n", grid,
            block, work ? "true" : "false", kc::chaining() ? "true" : "false", us);
      }
  CHECK(cudaFree(a));
  CHECK(cudaFree(b));
  return 0;
}
