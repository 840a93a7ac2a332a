// Fused dequantize + product on the tensor cores for 1..16 rows of bf16/fp16 activations (decode
// steps of batch 1..16): each packed weight byte is read once, decoded in registers and fed to
// mma.sync m16n8k16 (fp32 accumulators); the activation rows are the MMA's n dimension, padded
// to 8 (or 16) with copies of the last row, whose output columns are dropped. Included by
// gemv_cuda.cu, which builds the chunk decoders.
//
// Work of one block (kWarps warps) and of thread (g = lane / 4, t = lane % 4) of a warp:
//
//   block b:      output rows 16b .. 16b+15 (the MMA's m; the SwiGLU epilogue maps gate rows
//                 8b + g and up rows half + 8b + g instead, see kernel); its warps split the
//                 columns: warp w takes 128-column segments w, w + kWarps, ... (16 chunks of 8
//                 columns)
//   segment s:    thread t takes the quad of chunks 16s + 4t .. 16s + 4t + 3 of rows 16b + g and
//                 16b + g + 8 (one 16-byte load per row for the 4-bit formats: the 4 threads of
//                 a row read 64 adjacent bytes), and the same chunks of x row g (and g + 8 with
//                 16 rows); needs cols % 32 == 0 (whole quads) and 16-byte aligned codes
//                 (factored nf4/fp4 take chunks 2t, 2t + 1, 8 + 2t, 8 + 2t + 1 instead, in two
//                 8-byte loads per row: gemv_factored.cuh, "split layout")
//   chunk c:      its 8 columns are two MMAs' k slots of thread t:
//                   MMA h (h = 0, 1): columns 8c + 4h + {0, 1} -> k slots 2t, 2t + 1   (a0, a1, b0)
//                                     columns 8c + 4h + {2, 3} -> k slots 2t + 8, 2t + 9 (a2, a3,
//                                     b1)
//                 the sum over k does not care which column sits in which slot, as long as the
//                 weights (A) and activations (B) of a slot agree, and they depend on t only
//   registers:    a0 = W[row g][col, col + 1], a1 = W[row g + 8][..], a2/a3 the next pair;
//                 b0 = x[row g][col, col + 1], b1 the next pair (bf16x2: the lower column in the
//                 low 16 bits); accumulator c0, c1 = y[row g][n = 2t, 2t + 1], c2, c3 row g + 8
//   reduction:    the warps' accumulators are summed in shared memory by warp 0 in warp order
//                 (deterministic: a replayed graph equals the eager step bit for bit)
//
// Numerics as the SIMT kernel's: each weight is decoded in fp32 (code value x scale) and rounded
// once to the activations' dtype, exactly the weight the dequantize-then-GEMM path hands to cuBLAS;
// the tensor cores multiply exactly and accumulate in fp32, bias added in fp32, one rounding.
// Except where a scale holds for all the columns of an MMA (int4 in groups of 128, nf4/fp4 in
// blocks of 64 or more): those factor the scale out (kFactor, gemv_factored.cuh), the MMAs take
// the code values (int4: exact integers code - zero; nf4/fp4: the code value rounded to T) and
// each partial sum is multiplied by its scale, with less than half the decoding instructions.
#pragma once

#include <algorithm>
#include <type_traits>

#include "decode_cuda.cuh"
#include "gemv_factored.cuh"

namespace kldq::kernels::cuda {
namespace mma {

constexpr int kSegChunks = 16;  // chunks (8 columns each) per segment: 4 per thread column t

// Two floats rounded to T and packed: `lo` (the lower column) in the low 16 bits.
template <class T>
__device__ inline uint32_t pack2(float lo, float hi);
template <>
__device__ inline uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ inline uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// c[4] += A[16 x 16] . B[16 x 8] on the tensor cores (fragments as in the diagram above).
template <class T>
__device__ inline void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Where one thread works: its rows and the product's shape. kFactor: factored_segment.
template <class T, class D, int kNT, bool kFactor>
struct Lane {
  const D& d;
  const T* x;
  int m, g, t;
  int64_t r_lo, r_hi;        // rows g and g + 8 of the block's tile
  int64_t base_lo, base_hi;  // their first chunks' indices
  bool ok_lo, ok_hi;
  uint32_t per_row;
  int64_t cols;
  float (&acc)[kNT][4];
  const CodePlanes& planes;  // nf4/fp4 code values in T, for their factored segments
  static constexpr bool kSplit = kFactor && kSplitLayout<D>;

  __device__ Lane(const D& d, const T* x, int m, int g, int t, int64_t r_lo, int64_t r_hi,
                  int64_t rows, uint32_t per_row, float (&acc)[kNT][4], const CodePlanes& planes)
      : d(d),
        x(x),
        m(m),
        g(g),
        t(t),
        r_lo(r_lo),
        r_hi(r_hi),
        base_lo(r_lo * per_row),
        base_hi(r_hi * per_row),
        ok_lo(r_lo < rows),
        ok_hi(r_hi < rows),
        per_row(per_row),
        cols(int64_t(per_row) * 8),
        acc(acc),
        planes(planes) {}

  // Segments s0, s0 + stride, ... (kU of them) into acc. kChecked: any of them may be past the
  // last segment, hold chunks past the last column or rows past the last row (the tail); else
  // all are whole (the bulk of the work: no predicate, no zero fill).
  template <bool kChecked, int kU>
  __device__ void segments(uint32_t s0, uint32_t stride, uint32_t count) {
    using Quad = typename D::Quad;
    Quad lo[kU], hi[kU];   // rows g, g + 8: the thread's 4 chunks of the segment
    uint4 xv[kU][kNT][4];  // x row 8j + g, the same 4 chunks (8 elements of T each)
#pragma unroll
    for (int su = 0; su < kU; ++su) {
      const uint32_t c0 = (s0 + su * stride) * kSegChunks, c = c0 + 4 * t;
      // (The split layout takes whole segments only: the tail's columns need no check.)
      const bool ok = !kChecked || (s0 + su * stride < count && c < per_row);
      lo[su] = !kChecked || (ok && ok_lo) ? load(base_lo, c0, r_lo) : Quad{};
      hi[su] = !kChecked || (ok && ok_hi) ? load(base_hi, c0, r_hi) : Quad{};
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        // Rows past m read row m - 1: the MMA's output columns are independent and those past
        // m are not written, so no zero fill (and no predicate) in the bulk.
        const int b = min(8 * j + g, m - 1);
        const uint4* src = reinterpret_cast<const uint4*>(x + b * cols) + c0;
#pragma unroll
        for (int u = 0; u < 4; ++u)
          xv[su][j][u] = ok ? src[chunk_of<kSplit>(t, u)] : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int su = 0; su < kU; ++su) {
      if (kChecked && s0 + su * stride >= count) break;  // warp-uniform: mma.sync needs the warp
      // Past the last column: zero weights and zero x (A x B = 0 whatever the decoders give).
      const bool ok = !kChecked || (s0 + su * stride) * kSegChunks + 4 * t < per_row;
      if constexpr (kFactor)
        factored_segment(lo[su], hi[su], xv[su]);
      else
        rounded_segment(lo[su], hi[su], xv[su], ok);
    }
  }

  // The thread's 4 chunks of the segment whose first chunk is c0, of the row starting at `base`.
  __device__ typename D::Quad load(int64_t base, uint32_t c0, int64_t r) const {
    if constexpr (kSplit)
      return d.load_split(base + c0 + 2 * t);
    else
      return d.load_quad(base + c0 + 4 * t, uint32_t(r));
  }

  // One segment, each weight decoded in fp32 and rounded to T (the diagram's slots).
  template <class Quad>
  __device__ void rounded_segment(const Quad& lo, const Quad& hi, const uint4 (&xv)[kNT][4],
                                  bool ok) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      float vl[8], vh[8];
      d.decode(D::chunk(lo, u), vl);
      d.decode(D::chunk(hi, u), vh);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t a[4] = {ok ? pack2<T>(vl[4 * h], vl[4 * h + 1]) : 0u,
                               ok ? pack2<T>(vh[4 * h], vh[4 * h + 1]) : 0u,
                               ok ? pack2<T>(vl[4 * h + 2], vl[4 * h + 3]) : 0u,
                               ok ? pack2<T>(vh[4 * h + 2], vh[4 * h + 3]) : 0u};
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          const uint4& xw = xv[j][u];
          mma16816<T>(acc[j], a, h == 0 ? xw.x : xw.z, h == 0 ? xw.y : xw.w);
        }
      }
    }
  }

  // One segment with the scales factored out (gemv_factored.cuh): the MMAs sum code value x
  // x in fp32 per scale (part; nf4/fp4: columns 0..63 and 64..127 of the segment, one absmax
  // block each), then acc += part x scale, per row. Pairs and slots as in the rounded path, MMA
  // h taking pairs 2h and 2h + 1; int4 pairs columns (p, p + 4) and x is paired to match. Rows or
  // columns past the end hold Quad{}: scale 0 (int4: also A = 0; x is 0 past the columns).
  template <class Quad>
  __device__ void factored_segment(const Quad& lo, const Quad& hi, const uint4 (&xv)[kNT][4]) {
    constexpr int kParts = kSplit ? 2 : 1;
    float part[kParts][kNT][4] = {};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      uint32_t al[4], ah[4];
      if constexpr (kSplit) {
        float4_pairs(planes, lo.w[u], al);
        float4_pairs(planes, hi.w[u], ah);
      } else {
        int4_pairs<T>(lo.w[u], int4_zero_pair<T>(lo.sz.zero), al);
        int4_pairs<T>(hi.w[u], int4_zero_pair<T>(hi.sz.zero), ah);
      }
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const uint4& xw = xv[j][u];
        uint32_t xb[4] = {xw.x, xw.y, xw.z, xw.w};
        if constexpr (!kSplit) int4_x_pairs(xw, xb);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t a[4] = {al[2 * h], ah[2 * h], al[2 * h + 1], ah[2 * h + 1]};
          mma16816<T>(part[kSplit ? u / 2 : 0][j], a, xb[2 * h], xb[2 * h + 1]);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kParts; ++q)
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          acc[j][i] = fmaf(part[q][j][i], segment_scale<kSplit>(i < 2 ? lo : hi, q), acc[j][i]);
  }
};

// Segments whose loads a warp issues before decoding any (bytes in flight, against registers and
// so occupancy): 2 with one tile of x rows, 1 with two (whose x registers double) and for the
// 4-bit integer codes, whose decoding needs more registers. Measured on an H100 at one x row
// (kldq_bench_dequant variants, 2026-12-06): int4_g128 reads 10-35 % faster with 1 on Qwen2.5-7B's
// fused q/k/v, o, gate/up and down shapes; nf4 within 2 % either way. Factored segments take 1:
// with 2, factored nf4's 16-warp blocks need 74 registers a thread, one block per SM instead of
// two, and 7B decode at batch 1 ran 8 % slower than rounded nf4 (273 against 296 tokens/s; with
// 1, 303: H100, 2026-12-07); factored_unroll says where they take 2.
template <class D>
struct Int4Codes : std::false_type {};
template <int kBits, bool kFlat, bool kFz>
struct Int4Codes<DecodeIntGroup<kBits, kFlat, kFz>> : std::bool_constant<kBits == 4> {};
// kFactor: 0 rounded weights, else factored with kFactor segments in flight (the launcher's
// choice, factored_unroll).
template <class D, int kNT, int kFactor>
constexpr int segment_unroll() {
  if constexpr (kFactor > 0) return kFactor;
  return kNT == 2 || Int4Codes<D>::value ? 1 : 2;
}

// The codes of a tile's rows that prefetch_tile moves to L2 before the chain wait: row r's
// bytes are codes[r row_bytes, (r + 1) row_bytes) (every format stores its codes row-major).
struct TileCodes {
  const uint8_t* codes;
  int64_t row_bytes;
  uint32_t prefetch;  // leading bytes of each row (<= row_bytes; 0: none)
};

// The block's rows lo0 .. lo0 + 7 and hi0 .. hi0 + 7 (those below `rows`): the first `prefetch`
// bytes of each, one 128-byte line per thread, into L2 while the previous kernel of the step
// still runs. Safe before the chain wait: a prefetch changes no value and fills L2 only, the
// point where the GPU's writes meet, so even a streamed block's slot rewritten by a copy that
// the wait orders is read fresh. Only addresses inside the rows are named.
__device__ inline void prefetch_tile(const TileCodes& c, int64_t lo0, int64_t hi0, int64_t rows) {
  const uint32_t lines = (c.prefetch + 127) / 128;
  for (uint32_t i = threadIdx.x; i < 16 * lines; i += blockDim.x) {
    const uint32_t k = i / lines, line = i - k * lines;
    const int64_t r = (k < 8 ? lo0 : hi0 - 8) + k;
    if (r < rows)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(c.codes + r * c.row_bytes + line * 128));
  }
}

// kNT: 8-row tiles of x (1: up to 8 rows, 2: up to 16). Block b's rows: 16 b .. 16 b + 15 of
// y [m, rows]; with kSwiGLU, a fused gate/up weight (rows [gate; up], half = rows / 2, half % 8
// == 0), gate rows 8 b .. 8 b + 7 as the MMA's rows g and their up rows half + 8 b + g as rows
// g + 8, so that each thread holds a gate value and its up value: y [m, half] = silu(gate) * up,
// each rounded to T first (kernels::silu_mul's formula on the rounded outputs, value for value).
template <class T, class D, int kNT, int kWarps, bool kSwiGLU, int kFactor>
__global__ void __launch_bounds__(32 * kWarps)
    kernel(D d, const T* __restrict__ x, int m, const T* __restrict__ bias, T* __restrict__ y,
           int64_t rows, uint32_t per_row, CodeTable table, TileCodes tile) {
  constexpr int kUnroll = segment_unroll<D, kNT, kFactor>();
  __shared__ float partial[kWarps][32][4 * kNT];
  const int64_t half = rows / 2, lo0 = int64_t(blockIdx.x) * (kSwiGLU ? 8 : 16),
                hi0 = kSwiGLU ? half + lo0 : lo0 + 8;
  prefetch_tile(tile, lo0, hi0, rows);
  load_table(table);
  chain_release();  // launched chained (cuda_common.cuh): x, bias and y only after the wait
  chain_wait();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t r_lo = lo0 + g, r_hi = hi0 + g;
  float acc[kNT][4] = {};
  CodePlanes planes{};  // registers, filled for factored nf4/fp4 only
  if constexpr (kFactor > 0 && kSplitLayout<D>) planes = code_planes<T>(table);
  Lane<T, D, kNT, (kFactor > 0)> work(d, x, m, g, t, r_lo, r_hi, rows, per_row, acc, planes);
  // Warp `warp` takes segments warp, warp + kWarps, ...: first kUnroll at a time while they are
  // whole (whole tile of rows, all 16 chunks inside the row), then the rest one at a time.
  const uint32_t segments = (per_row + kSegChunks - 1) / kSegChunks, whole = per_row / kSegChunks;
  uint32_t s0 = warp;
  if (kSwiGLU || int64_t(blockIdx.x + 1) * 16 <= rows)
    for (; s0 + (kUnroll - 1) * kWarps < whole; s0 += kWarps * kUnroll)
      work.template segments<false, kUnroll>(s0, kWarps, whole);
  for (; s0 < segments; s0 += kWarps) work.template segments<true, 1>(s0, kWarps, segments);
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][lane][4 * j + i] = acc[j][i];
  __syncthreads();
  if (warp != 0) return;
  for (int j = 0; j < kNT; ++j) {
    float v[4];  // y[n = 8 j + 2 t + (i & 1)][i < 2 ? r_lo : r_hi] + bias, in fp32
    for (int i = 0; i < 4; ++i) {
      v[i] = 0.f;
      for (int w = 0; w < kWarps; ++w) v[i] += partial[w][lane][4 * j + i];
      const int64_t r = i < 2 ? r_lo : r_hi;
      if (bias && r < rows) v[i] += Conv<T>::to_float(bias[r]);  // no read past the last row
    }
    for (int i = 0; i < (kSwiGLU ? 2 : 4); ++i) {
      const int64_t r = i < 2 ? r_lo : r_hi;
      const int n = 8 * j + 2 * t + (i & 1);
      if (r >= rows || n >= m) continue;
      if constexpr (kSwiGLU)
        y[n * half + r] = silu_times<T>(round_to<T>(v[i]), round_to<T>(v[i + 2]));
      else
        y[n * rows + r] = Conv<T>::from_float(v[i]);
    }
  }
}

// L2 bytes one product prefetches before its chain wait, over all its tiles: a third of an
// H100's 50 MB L2, so that the prefetched lines of a large layer (Qwen2.5-7B's fused gate/up
// holds 68 MB of nf4 codes) stay until their blocks read them.
constexpr int64_t kPrefetchBudget = int64_t(16) << 20;

// The prefetch of each tile's rows: all of them when the layer's codes fit the budget, else the
// same leading share of every row (whole 128-byte lines).
inline TileCodes tile_codes(const PackedView& w, int64_t tiles) {
  const int64_t row_bytes = w.row_bytes();
  const int64_t share = std::min(row_bytes, kPrefetchBudget / (tiles * 16) / 128 * 128);
  return {w.codes, row_bytes, static_cast<uint32_t>(share)};
}

// Segments in flight for factored nf4/fp4 at one x tile (<= 8 rows; 16 rows take one): two where
// the extra registers (72-78 against 58-72 a thread) cost no occupancy that the grid needs, or a
// warp has few segments to run, whose load latencies a second segment in flight then hides: no more
// tiles than SMs (one block per SM), or 4-warp blocks with at most 4 segments a warp (rows of <=
// 2,048 columns). One elsewhere: 16-warp blocks of more tiles than SMs then fit one block per SM
// instead of two. Measured on an H100 (2026-12-07, decode at batch 1, docs/GPU.md): qwen2.5-1.5b
// (every product two) 694-716 tokens/s against 663-685 with one; at 7B two in its 4-warp blocks (28
// segments a row) 294-297 against 302 with one, two everywhere 273.
inline int factored_unroll(int warps, int64_t tiles, uint32_t segments) {
  if (tiles <= int64_t(sm_count())) return 2;
  return warps == 4 && segments <= 4 * 4 ? 2 : 1;
}

// y[m, rows] = x[m, cols] . W^T (+ bias) for 1 <= m <= 16, T bf16 or fp16, cols % 32 == 0 and
// codes and x 16-byte aligned (gemv_applies checks). Blocks
// of 4 warps when there are enough 16-row tiles to fill the SMs several times, else 16 warps
// (the columns split finer: a [3584, 18944] down projection has only 224 tiles).
// swiglu: y [m, rows / 2] = silu(gate) * up of a fused gate/up weight (rows % 16 == 0).
template <class T, class D>
void launch(const D& d, const PackedView& w, const T* x, int m, const T* bias, T* y,
            CodeTable table, bool swiglu, cudaStream_t s) {
  const int64_t tiles = (w.rows + 15) / 16;
  const auto per_row = static_cast<uint32_t>(w.cols / 8);
  const bool wide = tiles < 4 * int64_t(sm_count());
  const TileCodes codes = tile_codes(w, tiles);
  auto go = [&](auto nt, auto warps) {
    constexpr int NT = decltype(nt)::value, W = decltype(warps)::value;
    auto run = [&](auto factor) {
      constexpr int F = decltype(factor)::value;
      launch_chained("gemv_packed (tensor cores)",
                     swiglu ? kernel<T, D, NT, W, true, F> : kernel<T, D, NT, W, false, F>,
                     static_cast<unsigned>(tiles), 32 * W, 0, s, d, x, m, bias, y, w.rows, per_row,
                     table, codes);
    };
    if constexpr (Factorable<D>::value)
      if (factored_applies<D>(w)) {
        if constexpr (kSplitLayout<D> && NT == 1)
          if (factored_unroll(W, tiles, (per_row + kSegChunks - 1) / kSegChunks) == 2)
            return run(std::integral_constant<int, 2>{});
        return run(std::integral_constant<int, 1>{});
      }
    run(std::integral_constant<int, 0>{});
  };
  using I1 = std::integral_constant<int, 1>;
  using I2 = std::integral_constant<int, 2>;
  using W4 = std::integral_constant<int, 4>;
  using W16 = std::integral_constant<int, 16>;
  if (m <= 8)
    wide ? go(I1{}, W16{}) : go(I1{}, W4{});
  else
    wide ? go(I2{}, W16{}) : go(I2{}, W4{});
}

}  // namespace mma
}  // namespace kldq::kernels::cuda
