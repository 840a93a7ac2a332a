// The tensor-core GEMV's staged loads (gemv_mma.cuh): a thread's quads of codes and their scale
// words travel to shared memory by cp.async, several segments ahead of the one it decodes, so that
// more weight bytes are in flight per SM than registers could hold. Which formats take it and
// where their bytes are; included by gemv_mma.cuh.
//
// Ring of kStages stages in dynamic shared memory (n = threads per block, i = threadIdx.x):
//
//   codes:   [stage][row lo/hi][i] 16 bytes   (one 4-bit quad: 32 weights of one row)
//   scales:  [stage][row lo/hi][i] 4 bytes    (the aligned word holding the quad's scale)
//
// Each thread reads back only its own slots (no barrier between threads), after
// cp.async.wait_group has completed its copies of that stage; consecutive threads' slots are
// consecutive, so the 16-byte reads of a quarter warp meet no bank conflict.
#pragma once

#include <type_traits>

#include "decode_cuda.cuh"

namespace kldq::kernels::cuda {
namespace mma {

constexpr int kStages = 4;
constexpr int kStageBytes = 2 * (16 + 4);  // per thread and stage: two rows' codes and scales

inline int staged_shared_bytes(int threads) {
  return kStages * kStageBytes * threads;
}

// The 4-bit formats whose quad is 16 bytes of codes and one 4-byte-aligned scale word: nf4/fp4
// (fp32 absmax) and symmetric int4 (fp16 scales, the word holding the scale; asymmetric zero
// points and fp16 zeros take the register path).
template <class D>
struct Staging : std::false_type {};

template <>
struct Staging<Decode4bit> : std::true_type {
  using D = Decode4bit;
  static bool applies(const D&) { return true; }
  // Quad idx (idx % 4 == 0) of row r: its codes, its scale word, and the quad from both.
  __device__ static const void* codes(const D& d, int64_t idx, uint32_t) {
    return d.codes + idx * 4;
  }
  __device__ static const void* scale_word(const D& d, int64_t idx, uint32_t) {
    return d.absmax + ((idx * 8) >> d.block_shift);
  }
  __device__ static D::Quad quad(const D&, uint4 w, uint32_t s, int64_t, uint32_t) {
    return {{w.x, w.y, w.z, w.w}, __uint_as_float(s)};
  }
};

template <bool kFlat>
struct Staging<DecodeIntGroup<4, kFlat, false>> : std::true_type {
  using D = DecodeIntGroup<4, kFlat, false>;
  static bool applies(const D& d) { return d.zeros == nullptr; }
  // The quad's group, as load_quad finds it.
  __device__ static int64_t group(const D& d, int64_t idx, uint32_t r) {
    if (kFlat) return (idx * 8) >> d.group_shift;
    return int64_t(r) * d.groups + (idx * 8 - int64_t(r) * d.cols) / d.group;
  }
  __device__ static const void* codes(const D& d, int64_t idx, uint32_t) {
    return d.codes + idx * 4;
  }
  // fp16 scales: the aligned word holding scale g (never past the tensor's last word).
  __device__ static const void* scale_word(const D& d, int64_t idx, uint32_t r) {
    return d.scales + (group(d, idx, r) & ~int64_t(1));
  }
  __device__ static typename D::Quad quad(const D& d, uint4 w, uint32_t s, int64_t idx,
                                          uint32_t r) {
    const auto half = static_cast<uint16_t>(group(d, idx, r) & 1 ? s >> 16 : s & 0xFFFFu);
    typename D::Quad q;
    q.w[0] = w.x, q.w[1] = w.y, q.w[2] = w.z, q.w[3] = w.w;
    q.sz = {0u, __half2float(__ushort_as_half(half)), kMagicValue + 8.f};  // zero point 8
    return q;
  }
};

__device__ inline void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ inline void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
}
__device__ inline void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int kPending>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}
__device__ inline uint4 shared_uint4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr));
  return v;
}
__device__ inline uint32_t shared_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr));
  return v;
}

// Slots of thread i in a ring at shared address `ring` (the layout above).
struct RingSlots {
  uint32_t ring, i, n;
  __device__ uint32_t codes(int stage, int row) const {
    return ring + ((stage * 2 + row) * n + i) * 16;
  }
  __device__ uint32_t scale(int stage, int row) const {
    return ring + kStages * 2 * n * 16 + ((stage * 2 + row) * n + i) * 4;
  }
};

}  // namespace mma
}  // namespace kldq::kernels::cuda
