// Design bound of a batch-1 decode step: how close to the bandwidth limit a step could come if
// every stage did nothing but read its bytes (weights, the K/V cache), for the ways a step can be
// cut into kernels. Each variant reads exactly the step's bytes; only the dependencies differ:
//
//   kernels8 / kernels5: one kernel per stage, chained by kldq's launch_chained (programmatic
//       dependent launch) in a CUDA graph, as kldq's step runs: 8 stages a layer (norm, q/k/v,
//       RoPE + append, attention, o, norm, gate/up, down), or 5 (the norms and RoPE folded into
//       the products and the attention). "_after": a stage reads its bytes after its chain wait
//       (its activations' dependency); "_before": it reads its weights before the wait (the most
//       any kernel can overlap with its predecessors: as if it staged its whole share of the
//       weights in shared memory while they run); "_prefetch": it moves up to 16 MB of them into
//       L2 before the wait and reads them after it (what kldq's products do, gemv_mma.cuh).
//   persistent5: one resident grid for the whole step, the 5 stages a layer separated by grid
//       barriers; "_prefetch": each block moves its share of the next stage's bytes (up to
//       16 MB) into L2 before it waits at the barrier.
//   stream: one kernel reading all the step's bytes, no dependencies (the copy-like floor).
//
// Prints one JSON line per (model, format, variant): us per step and the share of the bandwidth
// limit (bytes a step reads / the device-to-device copy's read + write rate, measured here, as
// scripts/gpu/generate_check.sh computes it). Target kldq_bench_step_bound.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda_bench.cuh"
#include "cuda_common.cuh"

namespace kc = kldq::kernels::cuda;

namespace {

constexpr int kThreads = 256;

__device__ inline uint32_t fold(uint4 v) {
  return v.x ^ v.y ^ v.z ^ v.w;
}

// Elements first, first + stride, ... of p[0, n), folded: four independent 16-byte loads in
// flight at every step, the last step's predicated, so that a stage ends after one round of load
// latency (a serial remainder loop would add up to three, which a real kernel need not pay).
__device__ uint32_t read_share(const uint4* __restrict__ p, int64_t n, int64_t first,
                               int64_t stride) {
  uint32_t acc = 0;
  for (int64_t i = first; i < n; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      v[u] = i + u * stride < n ? __ldcs(p + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= fold(v[u]);
  }
  return acc;
}

// The block's fold, written to out[blockIdx.x] (the next stage's input: a real dependency).
__device__ void write_block(uint32_t acc, uint32_t* out) {
  __shared__ uint32_t s;
  if (threadIdx.x == 0) s = 0;
  __syncthreads();
  atomicXor(&s, acc);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// The leading min(lines, kPrefetchLines) 128-byte lines of p, first, first + stride, ..., into
// L2: at most 16 MB a stage, kldq's budget (gemv_mma.cuh), so that a large stage (the LM head)
// does not evict its own prefetched lines.
constexpr int64_t kPrefetchLines = (int64_t(16) << 20) / 128;
__device__ void prefetch_l2(const uint4* p, int64_t n, int64_t first, int64_t stride) {
  const char* bytes = reinterpret_cast<const char*>(p);
  const int64_t lines = min((n + 7) / 8, kPrefetchLines);
  for (int64_t line = first; line < lines; line += stride)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(bytes + line * 128));
}

enum class Reads { AFTER, BEFORE, PREFETCH };

template <Reads kReads>
__global__ void __launch_bounds__(kThreads)
    stage(const uint4* __restrict__ w, int64_t n, const uint32_t* in, uint32_t* out) {
  kc::chain_release();
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x,
                stride = int64_t(gridDim.x) * blockDim.x;
  uint32_t acc = kReads == Reads::BEFORE ? read_share(w, n, first, stride) : 0;
  if (kReads == Reads::PREFETCH) prefetch_l2(w, n, first, stride);
  kc::chain_wait();
  acc ^= in[0];
  if (kReads != Reads::BEFORE) acc ^= read_share(w, n, first, stride);
  write_block(acc, out);
}

// Sense-reversing barrier of a resident grid: bar[0] counts arrivals, bar[1] is the generation.
__device__ void grid_barrier(unsigned* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned* gen = bar + 1;
    const unsigned g = *gen;
    __threadfence();
    if (atomicAdd(bar, 1u) == gridDim.x - 1) {
      atomicExch(bar, 0u);
      __threadfence();
      atomicAdd(bar + 1, 1u);
    } else {
      while (*gen == g) {
      }
    }
    __threadfence();
  }
  __syncthreads();
}

struct Stage {
  int64_t offset, n;  // uint4 elements of the step's buffer
  bool tiny;          // one block's work (a norm, RoPE): block 0 alone
};

template <bool kPrefetch>
__global__ void __launch_bounds__(kThreads)
    persistent(const uint4* __restrict__ base, const Stage* stages, int n_stages, unsigned* bar,
               uint32_t* out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  uint32_t acc = 0;
  for (int s = 0; s < n_stages; ++s) {
    const Stage st = stages[s];
    if (!st.tiny)
      acc ^= read_share(base + st.offset, st.n, first, stride);
    else if (blockIdx.x == 0)
      acc ^= read_share(base + st.offset, st.n, threadIdx.x, blockDim.x);
    if (kPrefetch && s + 1 < n_stages && !stages[s + 1].tiny)
      prefetch_l2(base + stages[s + 1].offset, stages[s + 1].n, first, stride);
    grid_barrier(bar);
  }
  write_block(acc, out);
}

__global__ void __launch_bounds__(kThreads)
    stream(const uint4* __restrict__ p, int64_t n, uint32_t* out) {
  write_block(read_share(p, n, int64_t(blockIdx.x) * blockDim.x + threadIdx.x,
                         int64_t(gridDim.x) * blockDim.x),
              out);
}

struct Model {
  const char* name;
  int64_t hidden, inter, heads, kv_heads, head_dim, layers, vocab;
};
struct Format {
  const char* name;
  double bits;  // per weight, scales included: nf4 4 + 32/64, int4_g128 4 + 16/128
};

}  // namespace

namespace {

struct Part {
  int64_t bytes;
  bool tiny;
};

// The step's stages in order: `fused` folds the norms and RoPE into the following product and
// the attention (5 stages a layer), else 8 as kldq's step runs them. The K/V cache is read over
// 384 columns (--speed's prompt of 128 and 256 new tokens); the LM head is bf16 in every plan.
std::vector<Part> step_parts(const Model& m, const Format& f, bool fused) {
  auto w = [&](int64_t rows, int64_t cols) { return int64_t(double(rows) * cols * f.bits / 8); };
  const int64_t h = m.hidden, kv = m.kv_heads * m.head_dim;
  const int64_t norm = 2 * h * 2, rope = 2 * m.head_dim * 2;  // weight + residual; cos, sin
  const int64_t qkv = w(h + 2 * kv, h), attn = 2 * kv * 384 * 2, o = w(h, h);
  const int64_t gate_up = w(2 * m.inter, h), down = w(h, m.inter);
  std::vector<Part> p;
  for (int64_t l = 0; l < m.layers; ++l) {
    if (fused) {
      p.insert(p.end(), {{norm + qkv, false},
                         {rope + attn, false},
                         {o, false},
                         {norm + gate_up, false},
                         {down, false}});
    } else {
      p.insert(p.end(), {{norm, true},
                         {qkv, false},
                         {rope, true},
                         {attn, false},
                         {o, false},
                         {norm, true},
                         {gate_up, false},
                         {down, false}});
    }
  }
  if (!fused) p.push_back({norm, true});
  p.push_back({m.vocab * h * 2 + (fused ? norm : 0), false});
  return p;
}

std::vector<Stage> layout(const std::vector<Part>& parts, int64_t* total) {
  std::vector<Stage> s;
  int64_t off = 0;
  for (const Part& p : parts) {
    const int64_t n = (p.bytes + 15) / 16;
    s.push_back({off, n, p.tiny});
    off += n;
  }
  *total = off;
  return s;
}

int wide_grid(int64_t n, int sms) {
  return int(std::clamp<int64_t>((n + 4 * kThreads - 1) / (4 * kThreads), 1, 4 * sms));
}

// A CUDA graph of one chained kernel per stage, replayed: ms per step.
template <Reads kReads>
double kernels_ms(const uint4* base, const std::vector<Stage>& st, uint32_t* io[2], int sms) {
  const auto capture = [&](cudaStream_t s) {
    for (size_t k = 0; k < st.size(); ++k)
      kc::launch_chained("stage", stage<kReads>, st[k].tiny ? 1 : wide_grid(st[k].n, sms), kThreads,
                         0, s, base + st[k].offset, st[k].n, io[k % 2], io[1 - k % 2]);
  };
  return graph_replay_ms(capture, 3, 20);
}

// One cooperative launch per step, blocks_per_sm x SMs resident blocks: ms per step.
template <bool kPrefetch>
double persistent_ms(const uint4* base, const std::vector<Stage>& st, uint32_t* out, int sms,
                     int blocks_per_sm) {
  Stage* d_st;
  unsigned* bar;
  CHECK(cudaMalloc(&d_st, st.size() * sizeof(Stage)));
  CHECK(cudaMemcpy(d_st, st.data(), st.size() * sizeof(Stage), cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&bar, 2 * sizeof(unsigned)));
  CHECK(cudaMemset(bar, 0, 2 * sizeof(unsigned)));
  int n = int(st.size());
  void* args[] = {&base, &d_st, &n, &bar, &out};
  auto launch = [&](int k) {
    for (int i = 0; i < k; ++i)
      CHECK(cudaLaunchCooperativeKernel((void*)persistent<kPrefetch>, blocks_per_sm * sms, kThreads,
                                        args, 0, nullptr));
  };
  const int reps = 20;
  launch(3);
  const double ms = elapsed_ms([&] { launch(reps); });
  CHECK(cudaFree(d_st));
  CHECK(cudaFree(bar));
  return ms / reps;
}

double stream_ms(const uint4* base, int64_t n, uint32_t* out, int sms) {
  auto launch = [&](int k) {
    for (int i = 0; i < k; ++i) stream<<<4 * sms, kThreads>>>(base, n, out);
  };
  const int reps = 20;
  launch(3);
  return elapsed_ms([&] { launch(reps); }) / reps;
}

void run(const Model& m, const Format& f, double copy, int sms) {
  int64_t n8 = 0, n5 = 0;
  const std::vector<Stage> s8 = layout(step_parts(m, f, false), &n8);
  const std::vector<Stage> s5 = layout(step_parts(m, f, true), &n5);
  uint4* base;
  CHECK(cudaMalloc(&base, std::max(n8, n5) * 16));
  CHECK(cudaMemset(base, 0x5a, std::max(n8, n5) * 16));
  uint32_t* io[2];
  for (auto& p : io) CHECK(cudaMalloc(&p, 4 * sms * kThreads * sizeof(uint32_t)));
  CHECK(cudaDeviceSynchronize());
  auto report = [&](const char* variant, int64_t n, double ms) {
    std::printf(
        "{\"model\":\"%s\",\"format\":\"%s\",\"variant\":\"%s\",\"step_MB\":%.1f,"
        "\"us_per_step\":%.1f,\"share_of_limit\":%.3f}\n",
        m.name, f.name, variant, n * 16 / 1e6, ms * 1e3, n * 16 / (ms / 1e3) / 1e9 / copy);
    std::fflush(stdout);
  };
  report("kernels8_after", n8, kernels_ms<Reads::AFTER>(base, s8, io, sms));
  report("kernels8_before", n8, kernels_ms<Reads::BEFORE>(base, s8, io, sms));
  report("kernels8_prefetch", n8, kernels_ms<Reads::PREFETCH>(base, s8, io, sms));
  report("kernels5_after", n5, kernels_ms<Reads::AFTER>(base, s5, io, sms));
  report("kernels5_before", n5, kernels_ms<Reads::BEFORE>(base, s5, io, sms));
  report("kernels5_prefetch", n5, kernels_ms<Reads::PREFETCH>(base, s5, io, sms));
  for (int bps : {1, 2, 4}) {
    char name[64];
    std::snprintf(name, sizeof name, "persistent5_%dx", bps);
    report(name, n5, persistent_ms<false>(base, s5, io[0], sms, bps));
    std::snprintf(name, sizeof name, "persistent5_prefetch_%dx", bps);
    report(name, n5, persistent_ms<true>(base, s5, io[0], sms, bps));
  }
  report("stream", n5, stream_ms(base, n5, io[0], sms));
  for (auto p : io) CHECK(cudaFree(p));
  CHECK(cudaFree(base));
}

}  // namespace

int main() {
  const double copy = copy_gbps();
  cudaDeviceProp p{};
  CHECK(cudaGetDeviceProperties(&p, 0));
  std::printf("{\"device\":\"%s\",\"sms\":%d,\"copy_GBps\":%.1f,\"chained\":%s}\n", p.name,
              p.multiProcessorCount, copy, kc::chaining() ? "true" : "false");
  const Model models[] = {{"qwen2.5-1.5b", 1536, 8960, 12, 2, 128, 28, 151936},
                          {"qwen2.5-7b", 3584, 18944, 28, 4, 128, 28, 152064}};
  const Format formats[] = {{"bf16", 16}, {"nf4", 4.5}, {"int4_g128", 4.125}};
  for (const Model& m : models)
    for (const Format& f : formats) run(m, f, copy, p.multiProcessorCount);
  return 0;
}
