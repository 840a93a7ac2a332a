// Dequantization kernels of the packed formats (docs/FORMATS.md has the layouts). One thread
// decodes a chunk of 8 consecutive outputs of a row, so that every format's chunk starts on a
// byte boundary of its codes (8 codes of b bits are exactly b bytes) and shares one scale (groups
// and blocks are multiples of 8):
//
//   row r:   | chunk 0: cols 0..7 | chunk 1: cols 8..15 | ... | last chunk (maybe partial) |
//   codes:   | b bytes            | b bytes             | ... |
//   output:  | 16 bytes (bf16)    | ...  one vector store per chunk when cols % 8 == 0
//
// Values are computed as the CPU reference does (code value x scale, one fp32 product, then one
// rounding to the output dtype), so the output equals formats::dequantize bit for bit.
#include <cuda_fp8.h>

#include "cuda_common.cuh"
#include "dequant_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

// bitsandbytes' NF4 and FP4 code values (the tables of src/formats/quantize.cpp).
__constant__ float kTables[2][16] = {
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
     0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
     0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f},
    {0.0f, 0.0052083333f, 0.6666667f, 1.0f, 0.33333334f, 0.5f, 0.16666667f, 0.25f, -0.0f,
     -0.0052083333f, -0.6666667f, -1.0f, -0.33333334f, -0.5f, -0.16666667f, -0.25f}};

// Stores 8 values (one rounding each) to dst; one or two 16-byte stores when `vec`.
template <class T>
__device__ void store8(T* dst, const float (&v)[8], int valid, bool vec) {
  if (vec) {
    if constexpr (sizeof(T) == 4) {
      reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      union {
        uint4 u;
        T e[8];
      } pack;
#pragma unroll
      for (int j = 0; j < 8; ++j) pack.e[j] = Conv<T>::from_float(v[j]);
      *reinterpret_cast<uint4*>(dst) = pack.u;
    }
    return;
  }
  for (int j = 0; j < valid; ++j) dst[j] = Conv<T>::from_float(v[j]);
}

// General path (cols % 8 != 0 or unaligned output): grid-stride loop over the chunks of a
// [rows, cols] output; D::decode(r, c0, valid, table, v) fills v[0..valid) for columns
// c0..c0+valid-1 of row r, reading codes byte by byte. `table` is the format's 16-entry code table
// in shared memory (unused by the others).
template <class T, class D>
__global__ void dequant_kernel(D d, T* __restrict__ out, int64_t rows, int64_t cols, int table) {
  __shared__ float smem[16];
  if (threadIdx.x < 16) smem[threadIdx.x] = kTables[table][threadIdx.x];
  __syncthreads();
  const int64_t per_row = (cols + 7) / 8, total = rows * per_row;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / per_row, c0 = (idx - r * per_row) * 8;
    const int valid = static_cast<int>(cols - c0 < 8 ? cols - c0 : 8);
    float v[8];
    d.decode(r, c0, valid, smem, v);
    store8(out + r * cols + c0, v, valid, false);
  }
}

// Vector path (cols % 8 == 0, aligned): chunk idx covers elements [8 idx, 8 idx + 8) of the
// flattened output, so its codes sit at a fixed stride (b bytes) and its row is idx / per_row
// (32-bit division: layers have fewer than 2^32 chunks). Each thread first issues the loads of
// kUnroll chunks a grid-stride apart (D::load -> a few registers each), then decodes and stores
// them one by one: several loads in flight per thread at low register use, which is what keeps
// a write-heavy kernel near memory bandwidth. The grid is persistent (a few blocks per SM).
constexpr int kUnroll = 4;

template <class T, class D>
__global__ void dequant_vec_kernel(D d, T* __restrict__ out, int64_t chunks, uint32_t per_row,
                                   int table) {
  __shared__ float smem[16];
  if (threadIdx.x < 16) smem[threadIdx.x] = kTables[table][threadIdx.x];
  __syncthreads();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; first < chunks;
       first += stride * kUnroll) {
    typename D::Raw raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t idx = first + u * stride;
      if (idx < chunks) raw[u] = d.load(idx, static_cast<uint32_t>(idx) / per_row);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t idx = first + u * stride;
      if (idx >= chunks) break;
      float v[8];
      d.decode(raw[u], smem, v);
      store8(out + idx * 8, v, 8, true);
    }
  }
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
  __device__ void decode(const Raw& raw, const float* table, float (&v)[8]) const {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t byte = (raw.w >> (8 * (j / 2))) & 0xFFu;
      v[j] = __fmul_rn(table[j % 2 == 0 ? byte >> 4 : byte & 0xFu], raw.a);
    }
  }
  // General path: the chunk may start on an odd element and span two blocks.
  __device__ void decode(int64_t r, int64_t c0, int valid, const float* table,
                         float (&v)[8]) const {
    for (int j = 0; j < valid; ++j) {
      const int64_t i = r * cols + c0 + j;
      const uint32_t byte = codes[i / 2];
      v[j] = __fmul_rn(table[i % 2 == 0 ? byte >> 4 : byte & 0xFu], absmax[i >> block_shift]);
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
  __device__ void decode(const Raw& raw, const float*, float (&v)[8]) const {
    const uint32_t mask = (1u << bits) - 1;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      v[j] = __fmul_rn(__fsub_rn(float((raw.w >> (j * bits)) & mask), raw.zero), raw.scale);
  }
  __device__ void decode(int64_t r, int64_t c0, int valid, const float* table,
                         float (&v)[8]) const {
    const uint8_t* src = codes + r * row_bytes + (c0 / 8) * bits;
    uint32_t w = 0;
    for (int j = 0; j < (valid * bits + 7) / 8; ++j) w |= uint32_t(src[j]) << (8 * j);
    decode(scale_zero(r, c0, w), table, v);
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
  __device__ void decode(const Raw& raw, const float*, float (&v)[8]) const {
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
  __device__ void decode(int64_t r, int64_t c0, int valid, const float* table,
                         float (&v)[8]) const {
    Raw raw{make_uint2(0, 0), scale_of(r)};
    uint8_t* q = reinterpret_cast<uint8_t*>(&raw.q);
    for (int j = 0; j < valid; ++j) q[j] = codes[r * cols + c0 + j];
    decode(raw, table, v);
  }
};

// Blocks of a persistent grid: enough to fill every SM of the current device a few times.
unsigned persistent_blocks(int64_t work, int threads) {
  static int sms = 0;
  if (sms == 0) {
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (sms <= 0) sms = 1;
  }
  const int64_t need = (work + threads - 1) / threads;
  return static_cast<unsigned>(need < int64_t(sms) * 8 ? (need > 0 ? need : 1) : int64_t(sms) * 8);
}

template <class D>
void launch(Dtype t, const D& d, void* out, int64_t rows, int64_t cols, bool vec, int table,
            void* stream, const char* what) {
  const int64_t per_row = (cols + 7) / 8, chunks = rows * per_row;
  if (chunks == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    if (vec && chunks < (int64_t(1) << 32)) {
      dequant_vec_kernel<T, D>
          <<<persistent_blocks((chunks + kUnroll - 1) / kUnroll, 256), 256, 0, s>>>(
              d, static_cast<T*>(out), chunks, static_cast<uint32_t>(per_row), table);
    } else {
      dequant_kernel<T, D>
          <<<grid_for(chunks, 256), 256, 0, s>>>(d, static_cast<T*>(out), rows, cols, table);
    }
  });
  check_launch(what);
}

int log2_exact(int v) {
  int s = 0;
  while ((1 << s) < v) ++s;
  return s;
}

}  // namespace

void dequant_4bit(Dtype t, bool fp4, const uint8_t* codes, const float* absmax, int64_t rows,
                  int64_t cols, int block, void* out, bool vec, void* stream) {
  launch(t, Decode4bit{codes, absmax, cols, log2_exact(block)}, out, rows, cols, vec, fp4 ? 1 : 0,
         stream, "dequant_4bit");
}

void dequant_int_group(Dtype t, const uint8_t* codes, const uint16_t* scales, const uint8_t* zeros,
                       const uint16_t* zeros_f16, int bits, int64_t rows, int64_t cols, int group,
                       void* out, bool vec, void* stream) {
  const int64_t row_bytes = (cols * bits + 7) / 8, groups = (cols + group - 1) / group;
  const int shift = log2_exact(group);
  if (cols % group == 0) {
    const DecodeIntGroup<true> d{codes,     scales, zeros, zeros_f16, bits,
                                 row_bytes, groups, cols,  group,     shift};
    launch(t, d, out, rows, cols, vec, 0, stream, "dequant_int_group");
  } else {
    const DecodeIntGroup<false> d{codes,     scales, zeros, zeros_f16, bits,
                                  row_bytes, groups, cols,  group,     shift};
    launch(t, d, out, rows, cols, vec, 0, stream, "dequant_int_group");
  }
}

void dequant_int8(Dtype t, const int8_t* codes, const uint16_t* scales, int64_t rows, int64_t cols,
                  void* out, bool vec, void* stream) {
  launch(t, DecodeByte{reinterpret_cast<const uint8_t*>(codes), scales, 0, false, cols}, out, rows,
         cols, vec, 0, stream, "dequant_int8");
}

void dequant_fp8(Dtype t, bool e5m2, const uint8_t* codes, const float* scales, bool per_tensor,
                 int64_t rows, int64_t cols, void* out, bool vec, void* stream) {
  launch(t, DecodeByte{codes, scales, e5m2 ? 2 : 1, per_tensor, cols}, out, rows, cols, vec, 0,
         stream, "dequant_fp8");
}

}  // namespace kldq::kernels::cuda
