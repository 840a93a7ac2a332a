// Shared pieces of the standalone CUDA benchmarks (bench_read_pattern.cu, bench_launch_floor.cu,
// bench_step_bound.cu): an error check that exits with the call's text, event timing on a
// stream, a captured graph's replay time, the copy bandwidth.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(x)                                                    \
  do {                                                              \
    cudaError_t e_ = (x);                                           \
    if (e_ != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                 \
    }                                                               \
  } while (0)

// Milliseconds of the work f queues on stream s, between two events recorded there.
template <class F>
double elapsed_ms(F&& f, cudaStream_t s = nullptr) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  CHECK(cudaEventRecord(a, s));
  f();
  CHECK(cudaEventRecord(b, s));
  CHECK(cudaEventSynchronize(b));
  CHECK(cudaGetLastError());
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, a, b));
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return ms;
}

// Milliseconds per replay of the CUDA graph that capture(s) records on a stream s of its own:
// `warmup` replays first, then `reps` timed ones.
template <class F>
double graph_replay_ms(F&& capture, int warmup, int reps) {
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t g;
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  capture(s);
  CHECK(cudaStreamEndCapture(s, &g));
  cudaGraphExec_t e;
  CHECK(cudaGraphInstantiate(&e, g, 0));
  for (int i = 0; i < warmup; ++i) CHECK(cudaGraphLaunch(e, s));
  const double ms = elapsed_ms(
      [&] {
        for (int i = 0; i < reps; ++i) CHECK(cudaGraphLaunch(e, s));
      },
      s);
  CHECK(cudaGraphExecDestroy(e));
  CHECK(cudaGraphDestroy(g));
  CHECK(cudaStreamDestroy(s));
  return ms / reps;
}

// The device-to-device copy's rate in GB/s, bytes read + written (as torch's copy_ is counted
// in scripts/gpu/generate_check.sh): the bandwidth limit the benchmarks' shares are taken of.
inline double copy_gbps() {
  const size_t n = size_t(1) << 30;
  void *p, *q;
  CHECK(cudaMalloc(&p, n));
  CHECK(cudaMalloc(&q, n));
  auto copies = [&](int k) {
    for (int i = 0; i < k; ++i) CHECK(cudaMemcpyAsync(q, p, n, cudaMemcpyDeviceToDevice));
  };
  copies(3);
  const double ms = elapsed_ms([&] { copies(10); });
  CHECK(cudaFree(p));
  CHECK(cudaFree(q));
  return 2.0 * 10 * n / (ms / 1e3) / 1e9;
}
