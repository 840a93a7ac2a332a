// Factored segments of the tensor-core GEMV (gemv_mma.cuh): where a row's scale is constant over
// the columns that one MMA sums, the MMAs take the code values themselves and each partial sum
// is multiplied by its scale afterwards, instead of every weight being multiplied by its scale and
// rounded to T first. Less than half the decoding instructions; which weights are multiplied:
//
//   int4, groups of 128:  code - zero, an integer |.| <= 15, exact in bf16 and fp16: the product
//                         is the format's own (code - zero) x scale, no weight rounded at all
//   nf4/fp4, blocks of 64 (or multiples), rows of whole segments: the code value rounded to T
//                         (bf16: 8 significant bits) times the fp32 absmax, unrounded: each
//                         weight within 2^-8 of the format's value (bf16; 2^-11 fp16), the
//                         bound of the rounded weight, but not the same bits
//
// Included by gemv_mma.cuh, whose Lane::factored_segment uses these; T is __nv_bfloat16 or
// __half.
#pragma once

#include <type_traits>

#include "decode_cuda.cuh"

namespace kldq::kernels::cuda {
namespace mma {

// a - b on two packed T halves (exact where the callers use it: small integers).
template <class T>
__device__ inline uint32_t sub2(uint32_t a, uint32_t b) {
  using T2 = std::conditional_t<std::is_same_v<T, __nv_bfloat16>, __nv_bfloat162, __half2>;
  const T2 r = __hsub2(*reinterpret_cast<const T2*>(&a), *reinterpret_cast<const T2*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// Decoders whose segments may take a factored path: 4-bit integer codes with groups tiling the
// rows and integer zero points (uint8 or symmetric, validated to the code range at load), and
// the 4-bit float formats. The launcher adds the group sizes and widths (factored_applies).
template <class D>
struct Factorable : std::false_type {};
template <>
struct Factorable<DecodeIntGroup<4, true, false>> : std::true_type {};
template <>
struct Factorable<Decode4bit> : std::true_type {};

// nf4/fp4 segments load their codes in halves (split layout): thread t takes chunks 2t, 2t + 1
// (columns 16t .. 16t + 15) and 8 + 2t, 8 + 2t + 1 (columns 64 + 16t ..) of the 128-column
// segment, so that the MMAs of chunks 0, 1 cover columns 0..63 of the segment, one absmax block,
// and those of chunks 2, 3 columns 64..127, the next. int4_g128 keeps chunks 4t .. 4t + 3.
template <class D>
constexpr bool kSplitLayout = std::is_same_v<D, Decode4bit>;

// Whether w's products take the factored path: int4 groups of whole 128-column segments; nf4/fp4
// blocks of whole 64-column halves and rows of whole segments (the split layout has no tail).
template <class D>
bool factored_applies(const PackedView& w) {
  if constexpr (kSplitLayout<D>) return w.group % 64 == 0 && w.cols % 128 == 0;
  return w.group % 128 == 0;
}

// The scale of part q (0, 1) of a quad's segment: the half's absmax (split layout) or the group's.
template <bool kSplit, class Quad>
__device__ inline float segment_scale(const Quad& quad, int q) {
  if constexpr (kSplit)
    return q == 0 ? quad.a : quad.a2;
  else
    return quad.sz.scale;
}

// The segment's chunk (0..15) that thread t takes as its chunk u (0..3).
template <bool kSplit>
__device__ inline uint32_t chunk_of(int t, int u) {
  if constexpr (kSplit) return u < 2 ? 2 * t + u : 8 + 2 * t + (u - 2);
  return 4 * t + u;
}

// PTX prmt.b32 in its default mode: byte i of the result is byte (c >> 4i) & 7 of (a, b) (a's
// bytes 0..3, b's 4..7), or, where bit 4i + 3 of c is set, that byte's top bit replicated.
// (__byte_perm documents only the low 3 bits of each selector nibble.)
__device__ inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// The 16 code values of a 4-bit float format rounded to T, as byte planes for PRMT lookups:
// hi[i] holds the high bytes of values 4i .. 4i + 3 (byte j = value 4i + j), lo[i] the low bytes.
struct CodePlanes {
  uint32_t hi[4], lo[4];
};

template <class T>
__device__ inline CodePlanes code_planes(const CodeTable& table) {
  CodePlanes p{};
#pragma unroll
  for (int c = 0; c < 16; ++c) {
    const T v = Conv<T>::from_float(table.v[c]);
    const uint32_t bits = *reinterpret_cast<const uint16_t*>(&v);
    p.hi[c / 4] |= (bits >> 8) << (8 * (c % 4));
    p.lo[c / 4] |= (bits & 0xFFu) << (8 * (c % 4));
  }
  return p;
}

// Four codes' values as two T pairs. `sel` holds the codes in its low 16 bits, nibble j = code
// of output byte j, in the order of the packed byte (high nibble = the earlier code): nibbles
// (c1, c0, c3, c2). The low 3 bits of a nibble index 8 bytes of a plane pair (PRMT; its bit 3
// would mean sign replication, hence the mask), bit 3 picks the pair: m, 0xFF per byte where it
// is set, comes from PRMT's sign mode on the bytes whose top bit is that code bit.
//   plane bytes:  h = [H(c1) H(c0) H(c3) H(c2)], l likewise
//   pairs:        (c0, c1) = [l1 h1 l0 h0] (PRMT 0x4051), (c2, c3) = [l3 h3 l2 h2] (0x6273)
__device__ inline void lookup4(const CodePlanes& p, uint32_t sel, uint32_t m, uint32_t& p01,
                               uint32_t& p23) {
  sel &= 0x7777u;
  const uint32_t h0 = prmt(p.hi[0], p.hi[1], sel), h1 = prmt(p.hi[2], p.hi[3], sel);
  const uint32_t l0 = prmt(p.lo[0], p.lo[1], sel), l1 = prmt(p.lo[2], p.lo[3], sel);
  const uint32_t h = (h0 & ~m) | (h1 & m), l = (l0 & ~m) | (l1 & m);
  p01 = prmt(l, h, 0x4051u);
  p23 = prmt(l, h, 0x6273u);
}

// A chunk word of 8 nf4/fp4 codes (byte k = code 2k << 4 | code 2k + 1) as 4 T pairs: pair k =
// columns (2k, 2k + 1), the rounded path's pairing. Code bit 3 of nibble n is the top bit of
// byte n / 2 of w (odd n) or of w << 4 (even n); PRMT selector nibble 8 | i replicates the top
// bit of byte i of (w, w << 4).
__device__ inline void float4_pairs(const CodePlanes& p, uint32_t w, uint32_t (&a)[4]) {
  const uint32_t w4 = w << 4;
  lookup4(p, w, prmt(w, w4, 0x9D8Cu), a[0], a[1]);
  lookup4(p, w >> 16, prmt(w, w4, 0xBFAEu), a[2], a[3]);
}

// M in both halves of a T pair, as bits: 128 in bf16, 1024 in fp16, where the spacing is 1, so
// that M | code (code < 128) is the T value M + code.
template <class T>
constexpr uint32_t kPairMagic = std::is_same_v<T, __nv_bfloat16> ? 0x43004300u : 0x64006400u;

// A chunk word of 8 int4 codes (code j at bits 4j .. 4j + 3) as 4 T pairs of code - zero: pair
// p = columns (p, p + 4), the nibbles 16 bits apart: (w >> 4p) & 0x000F000F | kPairMagic gives
// the halves M + code, minus z = M + zero.
template <class T>
__device__ inline void int4_pairs(uint32_t w, uint32_t z, uint32_t (&a)[4]) {
#pragma unroll
  for (int p = 0; p < 4; ++p) a[p] = sub2<T>(((w >> (4 * p)) & 0x000F000Fu) | kPairMagic<T>, z);
}

// M + zero in both halves, from the decoder's 2^23 + zero (0 for Quad{}, the zero fill).
template <class T>
__device__ inline uint32_t int4_zero_pair(float zero) {
  return kPairMagic<T> | (__float_as_uint(zero) & 0xFFu) * 0x00010001u;
}

// x pairs for int4_pairs' column pairs (p, p + 4) from a chunk's words (x0 x1 | x2 x3 | x4 x5 |
// x6 x7, the lower column in the low half).
__device__ inline void int4_x_pairs(const uint4& x, uint32_t (&b)[4]) {
  b[0] = __byte_perm(x.x, x.z, 0x5410u);
  b[1] = __byte_perm(x.x, x.z, 0x7632u);
  b[2] = __byte_perm(x.y, x.w, 0x5410u);
  b[3] = __byte_perm(x.y, x.w, 0x7632u);
}

}  // namespace mma
}  // namespace kldq::kernels::cuda
