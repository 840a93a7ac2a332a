// The packed formats' chunk decoders, shared by the dequantization kernels (dequant_cuda.cu)
// and the fused dequantize + GEMV kernels (gemv_cuda.cu). A chunk is 8 consecutive weights of
// a row: 8 codes of b bits are exactly b bytes, so every format's chunk starts on a byte boundary
// and shares one scale (groups and blocks are multiples of 8). Each decoder gives
//   load(idx, r)            the raw bytes and scale of vector chunk idx (elements [8 idx, 8 idx
//                           + 8) of the flattened weight, row r; needs cols % 8 == 0),
//   decode(raw, v)          its 8 fp32 values, code value x scale in one fp32 product (as the CPU
//                           reference formats::dequantize computes them),
//   decode(r, c0, n, v)     the general path: columns c0..c0+n-1 of row r, any alignment,
//   load_quad(idx, r)       chunks idx .. idx + 3 (idx % 4 == 0: 32 weights, 4 b bytes that
//                           are 16-byte aligned when the codes are, in one block or group since
//                           these are >= 32 weights) as b 32-bit words and one scale,
//   chunk(quad, u)          chunk idx + u of a quad as load(idx + u) gives it,
//   load_split(idx)         (nf4/fp4) chunks idx, idx + 1, idx + 8, idx + 9 as a quad, for the
//                           factored GEMV's split layout (gemv_factored.cuh).
// The 4-bit formats' 16 code values are read from shared memory (code_values, load_table).
#pragma once

#include <cuda_fp8.h>

#include <type_traits>

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
// A namespace-scope __shared__ array, 256-byte aligned: its 32-bit shared address has a zero low
// byte, so the address of code i is the address with 4 i as its low byte, which one PRMT builds
// from a byte of 4 x codes (see Decode4bit::decode: no add, shift or mask per weight).
static __shared__ __align__(256) float code_values[16];

// The float at 32-bit shared-space address `addr`.
__device__ inline float shared_float(uint32_t addr) {
  float v;
  // volatile: the compiler must not hoist the load above load_table's __syncthreads.
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr));
  return v;
}

// 2^23 + u as a float, exactly (u < 2^23 in the low bits of the mantissa): the integer-to-float
// conversion of small unsigned codes as one PRMT or LOP3 instead of I2F (a quarter-rate
// instruction that bounded the fused kernels). Subtracting 2^23 (+ an integer zero) is exact.
constexpr uint32_t kMagic = 0x4B000000u;
constexpr float kMagicValue = 8388608.0f;

// Chunk u (0..3) of a quad's little-endian words w[0..kWords): bits [8 kWords u, + 8 kWords).
template <int kWords>
__device__ inline uint32_t quad_chunk(const uint32_t (&w)[kWords], int u) {
  const int bit = 8 * kWords * u, i = bit / 32, shift = bit % 32;
  if (shift == 0) return w[i];
  return i + 1 < kWords ? __funnelshift_r(w[i], w[i + 1], shift) : w[i] >> shift;
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
  struct Quad {
    uint32_t w[4];
    float a;
    float a2;  // load_split: the absmax of chunks 2 and 3
  };
  __device__ Quad load_quad(int64_t idx, uint32_t) const {
    const uint4 q = reinterpret_cast<const uint4*>(codes)[idx / 4];
    return {{q.x, q.y, q.z, q.w}, absmax[(idx * 8) >> block_shift], 0.f};
  }
  // Chunks idx, idx + 1 and idx + 8, idx + 9 (idx even: two 8-byte loads), the split layout of
  // the factored GEMV (gemv_factored.cuh), with the absmax of each pair.
  __device__ Quad load_split(int64_t idx) const {
    const auto* src = reinterpret_cast<const uint2*>(codes);
    const uint2 a = src[idx / 2], b = src[idx / 2 + 4];
    return {{a.x, a.y, b.x, b.y},
            absmax[(idx * 8) >> block_shift],
            absmax[((idx + 8) * 8) >> block_shift]};
  }
  __device__ static Raw chunk(const Quad& q, int u) { return {q.w[u], q.a}; }
  //   w:     byte k = [c(2k) : 4 | c(2k+1) : 4]          (bits 8k+7 .. 8k)
  //   even:  byte k = 4 c(2k)    = (w >> 2) & 0x3C..     (bits 8k+5 .. 8k+2)
  //   odd:   byte k = 4 c(2k+1)  = (w << 2) & 0x3C..
  //   address of c: PRMT(byte k of even/odd, table address's upper 3 bytes)
  __device__ void decode(const Raw& raw, float (&v)[8]) const {
    const auto base = static_cast<uint32_t>(__cvta_generic_to_shared(code_values));
    const uint32_t even = (raw.w >> 2) & 0x3C3C3C3Cu, odd = (raw.w << 2) & 0x3C3C3C3Cu;
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // PRMT selector 0x765k: byte k of even/odd, then base's bytes
      v[2 * k] = __fmul_rn(shared_float(__byte_perm(even, base, 0x7650u + k)), raw.a);
      v[2 * k + 1] = __fmul_rn(shared_float(__byte_perm(odd, base, 0x7650u + k)), raw.a);
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
// scale with the zero point a uint8 (asym), an fp16 (fz, HQQ) or 2^(b-1) (sym). kBits: the code
// bits (the loads and the unpacking are straight-line code per width). kFlatGroups: the groups
// tile every row exactly (cols % group == 0), so the vector path finds a chunk's group as
// 8 idx >> log2(group) without the row (and the compiler drops the row division). kFloatZero:
// fp16 zero points.
template <int kBits, bool kFlatGroups, bool kFloatZero>
struct DecodeIntGroup {
  static_assert(kBits == 2 || kBits == 3 || kBits == 4);
  const uint8_t* codes;
  const uint16_t* scales;
  const uint8_t* zeros;       // uint8 [rows, groups] or nullptr
  const uint16_t* zeros_f16;  // fp16 [rows, groups] or nullptr
  int64_t row_bytes, groups, cols;
  int group, group_shift;
  // code - zero from f = 2^23 + code: integer zero points (uint8, or 2^(b-1)) as f - (2^23 +
  // zero), exact; fp16 ones as (f - 2^23) - zero, one rounding as float(code) - zero.
  struct Raw {
    uint32_t w;
    float scale;
    float zero;  // 2^23 + zero for integer zero points, the zero point for fp16 ones
  };
  __device__ Raw scale_zero_at(int64_t g, uint32_t w) const {
    const float scale = __half2float(__ushort_as_half(scales[g]));
    if constexpr (kFloatZero) return {w, scale, __half2float(__ushort_as_half(zeros_f16[g]))};
    return {w, scale, kMagicValue + (zeros ? float(zeros[g]) : float(1 << (kBits - 1)))};
  }
  __device__ Raw scale_zero(int64_t r, int64_t c0, uint32_t w) const {
    return scale_zero_at(r * groups + c0 / group, w);
  }
  __device__ Raw load(int64_t idx, uint32_t r) const {
    uint32_t w;  // rows are whole chunks: row_bytes = per_row * b
    if constexpr (kBits == 4) {
      w = reinterpret_cast<const uint32_t*>(codes)[idx];
    } else if constexpr (kBits == 2) {
      w = reinterpret_cast<const uint16_t*>(codes)[idx];
    } else {
      const uint8_t* src = codes + idx * 3;
      w = uint32_t(src[0]) | uint32_t(src[1]) << 8 | uint32_t(src[2]) << 16;
    }
    if (kFlatGroups) return scale_zero_at((idx * 8) >> group_shift, w);
    return scale_zero(r, idx * 8 - int64_t(r) * cols, w);
  }
  struct Quad {
    uint32_t w[kBits];
    Raw sz;  // the group's scale and zero (w unused)
  };
  __device__ Quad load_quad(int64_t idx, uint32_t r) const {
    Quad q;
    const auto* src = reinterpret_cast<const uint32_t*>(codes) + idx / 4 * kBits;
    if constexpr (kBits == 4) {
      const uint4 v = *reinterpret_cast<const uint4*>(src);
      q.w[0] = v.x, q.w[1] = v.y, q.w[2] = v.z, q.w[3] = v.w;
    } else if constexpr (kBits == 2) {
      const uint2 v = *reinterpret_cast<const uint2*>(src);
      q.w[0] = v.x, q.w[1] = v.y;
    } else {
      q.w[0] = src[0], q.w[1] = src[1], q.w[2] = src[2];
    }
    q.sz = kFlatGroups ? scale_zero_at((idx * 8) >> group_shift, 0)
                       : scale_zero(r, idx * 8 - int64_t(r) * cols, 0);
    return q;
  }
  __device__ static Raw chunk(const Quad& q, int u) {
    return {quad_chunk(q.w, u), q.sz.scale, q.sz.zero};
  }
  // 2^23 + code j as float bits: 4 bits, PRMT of byte k of the even or odd codes' plane
  // (w & 0x0F.. holds code 2k in byte k, (w >> 4) & 0x0F.. code 2k + 1); 2 and 3 bits, shift
  // and one LOP3 ((w >> jb) & mask | 2^23's bits).
  __device__ void decode(const Raw& raw, float (&v)[8]) const {
    uint32_t f[8];
    if constexpr (kBits == 4) {
      const uint32_t even = raw.w & 0x0F0F0F0Fu, odd = (raw.w >> 4) & 0x0F0F0F0Fu;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        f[2 * k] = __byte_perm(even, kMagic, 0x7650u + k);
        f[2 * k + 1] = __byte_perm(odd, kMagic, 0x7650u + k);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) f[j] = ((raw.w >> (j * kBits)) & ((1u << kBits) - 1)) | kMagic;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float c = __uint_as_float(f[j]);
      v[j] = __fmul_rn(
          kFloatZero ? __fsub_rn(__fsub_rn(c, kMagicValue), raw.zero) : __fsub_rn(c, raw.zero),
          raw.scale);
    }
  }
  __device__ void decode(int64_t r, int64_t c0, int valid, float (&v)[8]) const {
    const uint8_t* src = codes + r * row_bytes + (c0 / 8) * kBits;
    uint32_t w = 0;
    for (int j = 0; j < (valid * kBits + 7) / 8; ++j) w |= uint32_t(src[j]) << (8 * j);
    decode(scale_zero(r, c0, w), v);
  }
};

// int8 and fp8: one byte per code, a per-row (or per-tensor, or no) scale. kKind: 0 int8, 1 fp8
// e4m3, 2 fp8 e5m2 (straight-line decoding per kind, no branch per weight).
template <int kKind>
struct DecodeByte {
  const uint8_t* codes;
  const void* scales;  // fp16 [rows] (int8), fp32 [rows] / [1] (fp8), or nullptr
  bool per_tensor;
  int64_t cols;
  struct Raw {
    uint2 q;
    float scale;  // 1 without scales: x * 1 = x exactly
  };
  __device__ float scale_of(int64_t r) const {
    if (!scales) return 1.0f;
    if (kKind == 0) return __half2float(__ushort_as_half(static_cast<const uint16_t*>(scales)[r]));
    return static_cast<const float*>(scales)[per_tensor ? 0 : r];
  }
  __device__ Raw load(int64_t idx, uint32_t r) const {
    return {reinterpret_cast<const uint2*>(codes)[idx], scale_of(r)};
  }
  struct Quad {
    uint4 lo, hi;  // chunks 0, 1 and 2, 3
    float scale;
  };
  __device__ Quad load_quad(int64_t idx, uint32_t r) const {
    const auto* src = reinterpret_cast<const uint4*>(codes) + idx / 2;
    return {src[0], src[1], scale_of(r)};
  }
  __device__ static Raw chunk(const Quad& q, int u) {
    const uint4& v = u < 2 ? q.lo : q.hi;
    return {u % 2 == 0 ? make_uint2(v.x, v.y) : make_uint2(v.z, v.w), q.scale};
  }
  // int8: q ^ 0x80 = q + 128 as an unsigned byte; PRMT puts it under 2^23's bits, and subtracting
  // 2^23 + 128 leaves q exactly. fp8 -> fp16 is exact for both encodings.
  __device__ void decode(const Raw& raw, float (&v)[8]) const {
    if constexpr (kKind == 0) {
      const uint32_t lo = raw.q.x ^ 0x80808080u, hi = raw.q.y ^ 0x80808080u;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        v[k] = __fmul_rn(
            __fsub_rn(__uint_as_float(__byte_perm(lo, kMagic, 0x7650u + k)), kMagicValue + 128.f),
            raw.scale);
        v[4 + k] = __fmul_rn(
            __fsub_rn(__uint_as_float(__byte_perm(hi, kMagic, 0x7650u + k)), kMagicValue + 128.f),
            raw.scale);
      }
    } else {
      uint8_t q[8];
      *reinterpret_cast<uint2*>(q) = raw.q;
#pragma unroll
      for (int j = 0; j < 8; ++j)
        v[j] = __fmul_rn(
            __half2float(__half(__nv_cvt_fp8_to_halfraw(q[j], kKind == 2 ? __NV_E5M2 : __NV_E4M3))),
            raw.scale);
    }
  }
  __device__ void decode(int64_t r, int64_t c0, int valid, float (&v)[8]) const {
    Raw raw{make_uint2(0, 0), scale_of(r)};
    uint8_t* q = reinterpret_cast<uint8_t*>(&raw.q);
    for (int j = 0; j < valid; ++j) q[j] = codes[r * cols + c0 + j];
    decode(raw, v);
  }
};

// f(decoder, table) for an int group format: its code width, group tiling and zero point type as
// template arguments.
template <class F>
void with_int_decoder(const PackedView& w, F&& f) {
  const auto* u16 = static_cast<const uint16_t*>(w.scales);
  const int64_t row_bytes = w.row_bytes(), groups = (w.cols + w.group - 1) / w.group;
  const auto* z8 = w.float_zero ? nullptr : static_cast<const uint8_t*>(w.zeros);
  const auto* z16 = w.float_zero ? static_cast<const uint16_t*>(w.zeros) : nullptr;
  auto go = [&](auto bits, auto flat, auto fz) {
    using D = DecodeIntGroup<decltype(bits)::value, decltype(flat)::value, decltype(fz)::value>;
    f(D{w.codes, u16, z8, z16, row_bytes, groups, w.cols, w.group, log2_exact(w.group)},
      CodeTable{});
  };
  auto with_bits = [&](auto flat, auto fz) {
    if (w.bits == 4) return go(std::integral_constant<int, 4>{}, flat, fz);
    if (w.bits == 3) return go(std::integral_constant<int, 3>{}, flat, fz);
    if (w.bits == 2) return go(std::integral_constant<int, 2>{}, flat, fz);
    throw std::runtime_error("packed view: int codes of " + std::to_string(w.bits) + " bits");
  };
  auto with_zero = [&](auto flat) {
    if (w.float_zero) return with_bits(flat, std::true_type{});
    with_bits(flat, std::false_type{});
  };
  if (w.cols % w.group == 0) return with_zero(std::true_type{});
  with_zero(std::false_type{});
}

// Calls f(decoder, table) with the chunk decoder of w's format and its code table (4-bit formats;
// empty for the others): the one place a kernel's launcher turns a view into a decoder.
template <class F>
void with_decoder(const PackedView& w, F&& f) {
  switch (w.kind) {
    case PackedView::Kind::FourBit:
      return f(
          Decode4bit{w.codes, static_cast<const float*>(w.scales), w.cols, log2_exact(w.group)},
          code_table(w.fp4));
    case PackedView::Kind::IntGroup:
      return with_int_decoder(w, f);
    case PackedView::Kind::Int8:
      return f(DecodeByte<0>{w.codes, w.scales, false, w.cols}, CodeTable{});
    case PackedView::Kind::Fp8:
      if (w.e5m2) return f(DecodeByte<2>{w.codes, w.scales, w.per_tensor, w.cols}, CodeTable{});
      return f(DecodeByte<1>{w.codes, w.scales, w.per_tensor, w.cols}, CodeTable{});
  }
}

}  // namespace kldq::kernels::cuda
