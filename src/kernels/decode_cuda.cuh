// The packed formats' chunk decoders, shared by the dequantization kernels (dequant_cuda.cu)
// and the fused dequantize + GEMV kernels (gemv_cuda.cu). A chunk is 8 consecutive weights of
// a row: 8 codes of b bits are exactly b bytes, so every format's chunk starts on a byte boundary
// and shares one scale (groups and blocks are multiples of 8). Each decoder gives
//   load(idx, r)            the raw bytes and scale of vector chunk idx (elements [8 idx, 8 idx
//                           + 8) of the flattened weight, row r; needs cols % 8 == 0),
//   decode(raw, v)          its 8 fp32 values, code value x scale in one fp32 product (as the CPU
//                           reference formats::dequantize computes them),
//   decode(r, c0, n, v)     the general path: columns c0..c0+n-1 of row r, any alignment.
// The 4-bit formats' 16 code values are read from shared memory (code_values, load_table).
#pragma once

#include <cuda_fp8.h>

#include "cuda_common.cuh"
#include "kldq/formats/code_tables.hpp"
#include "packed_view.hpp"

namespace kldq::kernels::cuda {

// A 4-bit format's code values (kldq/formats/code_tables.hpp), passed to the kernels by value
// (kernel parameters live in constant memory) and copied to shared memory by load_table.
struct CodeTable {
  float v[16];
};

// The table of fp4 (true) or nf4 (false); the others' kernels ignore it.
inline CodeTable code_table(bool fp4) {
  const auto& src = fp4 ? formats::kFP4Codes : formats::kNF4Codes;
  CodeTable t{};
  for (int i = 0; i < 16; ++i) t.v[i] = src[i];
  return t;
}

// log2 of a power of two (groups and 4-bit blocks), for the decoders' shifts.
inline int log2_exact(int v) {
  int s = 0;
  while ((1 << s) < v) ++s;
  return s;
}

// The 4-bit format's code values in shared memory, filled by load_table and read by Decode4bit.
// A namespace-scope __shared__ array: its offset is a constant of each kernel, so a lookup is
// one LDS [code * 4 + offset], with no address arithmetic per weight (a pointer argument would
// cost an add per lookup: the decoders are the fused kernels' inner loop).
static __shared__ __align__(64) float code_values[16];

// code_values[i] through its 32-bit shared-space address `base` (64-byte aligned, so base | 4 i
// is its address: one LOP3 merges the code's mask and the base) and the code's byte offset.
__device__ inline float code_value_at(uint32_t base, uint32_t offset) {
  float v;
  // volatile: the compiler must not hoist the load above load_table's __syncthreads.
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(base | offset));
  return v;
}

// Fills code_values from `table` (the 4-bit formats' kernels; the others ignore it); every thread
// of the block calls it.
__device__ inline void load_table(const CodeTable& table) {
  if (threadIdx.x < 16) code_values[threadIdx.x] = table.v[threadIdx.x];
  __syncthreads();
}

// nf4/fp4 byte k = [code(2k) : 4 | code(2k+1) : 4] over the flattened weight; a vector chunk
// is 4 bytes (one aligned 32-bit load, byte 0 in the low bits) inside one block.
struct Decode4bit {
  const uint8_t* codes;
  const float* absmax;
  int64_t cols;
  int block_shift;
  struct Raw {
    uint32_t w;
    float a;
  };
  __device__ Raw load(int64_t idx, uint32_t) const {
    return {reinterpret_cast<const uint32_t*>(codes)[idx], absmax[(idx * 8) >> block_shift]};
  }
  __device__ void decode(const Raw& raw, float (&v)[8]) const {
    const auto base = static_cast<uint32_t>(__cvta_generic_to_shared(code_values));
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      // Code j is bits [8 (j / 2) + 4, + 4) for even j, [8 (j / 2), + 4) for odd j; shifted
      // 2 bits less, the mask 0x3C leaves 4 x code, its byte offset in the table.
      const int shift = 8 * (j / 2) + (j % 2 == 0 ? 4 : 0) - 2;
      const uint32_t offset = (shift >= 0 ? raw.w >> shift : raw.w << -shift) & 0x3Cu;
      v[j] = __fmul_rn(code_value_at(base, offset), raw.a);
    }
  }
  // General path: the chunk may start on an odd element and span two blocks.
  __device__ void decode(int64_t r, int64_t c0, int valid, float (&v)[8]) const {
    for (int j = 0; j < valid; ++j) {
      const int64_t i = r * cols + c0 + j;
      const uint32_t byte = codes[i / 2];
      v[j] = __fmul_rn(code_values[i % 2 == 0 ? byte >> 4 : byte & 0xFu], absmax[i >> block_shift]);
    }
  }
};

// int2/3/4 LSB-first: code j of a chunk is bits [j*b, (j+1)*b) of its b bytes; w = (code - zero) *
// scale with the zero point a uint8 (asym), an fp16 (fz, HQQ) or 2^(b-1) (sym). kFlatGroups: the
// groups tile every row exactly (cols % group == 0), so the vector path finds a chunk's group as
// 8 idx >> log2(group) without the row (and the compiler drops the row division).
template <bool kFlatGroups>
struct DecodeIntGroup {
  const uint8_t* codes;
  const uint16_t* scales;
  const uint8_t* zeros;       // uint8 [rows, groups] or nullptr
  const uint16_t* zeros_f16;  // fp16 [rows, groups] or nullptr
  int bits;
  int64_t row_bytes, groups, cols;
  int group, group_shift;
  struct Raw {
    uint32_t w;
    float scale;
    float zero;  // integer zero points are exact in fp32, so code - zero is as in int
  };
  __device__ Raw scale_zero_at(int64_t g, uint32_t w) const {
    const float zero = zeros_f16 ? __half2float(__ushort_as_half(zeros_f16[g]))
                       : zeros   ? float(zeros[g])
                                 : float(1 << (bits - 1));
    return {w, __half2float(__ushort_as_half(scales[g])), zero};
  }
  __device__ Raw scale_zero(int64_t r, int64_t c0, uint32_t w) const {
    return scale_zero_at(r * groups + c0 / group, w);
  }
  __device__ Raw load(int64_t idx, uint32_t r) const {
    const uint8_t* src = codes + idx * bits;  // rows are whole chunks: row_bytes = per_row * b
    uint32_t w;
    if (bits == 4)
      w = reinterpret_cast<const uint32_t*>(codes)[idx];
    else if (bits == 2)
      w = reinterpret_cast<const uint16_t*>(codes)[idx];
    else
      w = uint32_t(src[0]) | uint32_t(src[1]) << 8 | uint32_t(src[2]) << 16;
    if (kFlatGroups) return scale_zero_at((idx * 8) >> group_shift, w);
    return scale_zero(r, idx * 8 - int64_t(r) * cols, w);
  }
  __device__ void decode(const Raw& raw, float (&v)[8]) const {
    const uint32_t mask = (1u << bits) - 1;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      v[j] = __fmul_rn(__fsub_rn(float((raw.w >> (j * bits)) & mask), raw.zero), raw.scale);
  }
  __device__ void decode(int64_t r, int64_t c0, int valid, float (&v)[8]) const {
    const uint8_t* src = codes + r * row_bytes + (c0 / 8) * bits;
    uint32_t w = 0;
    for (int j = 0; j < (valid * bits + 7) / 8; ++j) w |= uint32_t(src[j]) << (8 * j);
    decode(scale_zero(r, c0, w), v);
  }
};

// int8 and fp8: one byte per code, a per-row (or per-tensor, or no) scale.
struct DecodeByte {
  const uint8_t* codes;
  const void* scales;  // fp16 [rows] (int8), fp32 [rows] / [1] (fp8), or nullptr
  int kind;            // 0 int8, 1 fp8 e4m3, 2 fp8 e5m2
  bool per_tensor;
  int64_t cols;
  struct Raw {
    uint2 q;
    float scale;
  };
  __device__ float scale_of(int64_t r) const {
    if (!scales) return 1.0f;
    if (kind == 0) return __half2float(__ushort_as_half(static_cast<const uint16_t*>(scales)[r]));
    return static_cast<const float*>(scales)[per_tensor ? 0 : r];
  }
  __device__ Raw load(int64_t idx, uint32_t r) const {
    return {reinterpret_cast<const uint2*>(codes)[idx], scale_of(r)};
  }
  __device__ void decode(const Raw& raw, float (&v)[8]) const {
    uint8_t q[8];
    *reinterpret_cast<uint2*>(q) = raw.q;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float x;
      if (kind == 0) {
        x = float(static_cast<int8_t>(q[j]));
      } else {  // fp8 -> fp16 is exact for both encodings
        x = __half2float(__half(__nv_cvt_fp8_to_halfraw(q[j], kind == 2 ? __NV_E5M2 : __NV_E4M3)));
      }
      v[j] = scales ? __fmul_rn(x, raw.scale) : x;
    }
  }
  __device__ void decode(int64_t r, int64_t c0, int valid, float (&v)[8]) const {
    Raw raw{make_uint2(0, 0), scale_of(r)};
    uint8_t* q = reinterpret_cast<uint8_t*>(&raw.q);
    for (int j = 0; j < valid; ++j) q[j] = codes[r * cols + c0 + j];
    decode(raw, v);
  }
};

// Calls f(decoder, table) with the chunk decoder of w's format and its code table (4-bit formats;
// empty for the others): the one place a kernel's launcher turns a view into a decoder.
template <class F>
void with_decoder(const PackedView& w, F&& f) {
  const auto* u16 = static_cast<const uint16_t*>(w.scales);
  switch (w.kind) {
    case PackedView::Kind::FourBit:
      return f(
          Decode4bit{w.codes, static_cast<const float*>(w.scales), w.cols, log2_exact(w.group)},
          code_table(w.fp4));
    case PackedView::Kind::IntGroup: {
      const int64_t row_bytes = (w.cols * w.bits + 7) / 8,
                    groups = (w.cols + w.group - 1) / w.group;
      const auto* z8 = w.float_zero ? nullptr : static_cast<const uint8_t*>(w.zeros);
      const auto* z16 = w.float_zero ? static_cast<const uint16_t*>(w.zeros) : nullptr;
      const int shift = log2_exact(w.group);
      if (w.cols % w.group == 0)
        return f(DecodeIntGroup<true>{w.codes, u16, z8, z16, w.bits, row_bytes, groups, w.cols,
                                      w.group, shift},
                 CodeTable{});
      return f(DecodeIntGroup<false>{w.codes, u16, z8, z16, w.bits, row_bytes, groups, w.cols,
                                     w.group, shift},
               CodeTable{});
    }
    case PackedView::Kind::Int8:
      return f(DecodeByte{w.codes, w.scales, 0, false, w.cols}, CodeTable{});
    case PackedView::Kind::Fp8:
      return f(DecodeByte{w.codes, w.scales, w.e5m2 ? 2 : 1, w.per_tensor, w.cols}, CodeTable{});
  }
}

}  // namespace kldq::kernels::cuda
