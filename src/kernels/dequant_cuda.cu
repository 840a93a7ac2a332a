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

// Grid-stride loop over the chunks of a [rows, cols] output; D decodes one chunk:
//   d.decode(r, c0, valid, vec, table, v) fills v[0..valid) for columns c0..c0+valid-1 of row r.
// `table` is the format's 16-entry code table copied to shared memory (unused by the others).
template <class T, class D>
__global__ void dequant_kernel(D d, T* __restrict__ out, int64_t rows, int64_t cols, bool vec,
                               int table) {
  __shared__ float smem[16];
  if (threadIdx.x < 16) smem[threadIdx.x] = kTables[table][threadIdx.x];
  __syncthreads();
  const int64_t per_row = (cols + 7) / 8, total = rows * per_row;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / per_row, c0 = (idx - r * per_row) * 8;
    const int valid = static_cast<int>(cols - c0 < 8 ? cols - c0 : 8);
    float v[8];
    d.decode(r, c0, valid, vec, smem, v);
    store8(out + r * cols + c0, v, valid, vec);
  }
}

// nf4/fp4 byte k = [code(2k) : 4 | code(2k+1) : 4] over the flattened weight; a chunk of 8
// elements is 4 bytes (one aligned 32-bit load, byte 0 in the low bits).
struct Decode4bit {
  const uint8_t* codes;
  const float* absmax;
  int64_t cols;
  int block_shift;
  __device__ void decode(int64_t r, int64_t c0, int valid, bool vec, const float* table,
                         float (&v)[8]) const {
    const int64_t e = r * cols + c0;  // flat index of the chunk's first element
    if (vec) {                        // e is a multiple of 8: 4 whole bytes, one block
      const uint32_t w = *reinterpret_cast<const uint32_t*>(codes + e / 2);
      const float a = absmax[e >> block_shift];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t byte = (w >> (8 * (j / 2))) & 0xFFu;
        v[j] = __fmul_rn(table[j % 2 == 0 ? byte >> 4 : byte & 0xFu], a);
      }
      return;
    }
    // cols % 8 != 0: the chunk may start on an odd element and span two blocks.
    for (int j = 0; j < valid; ++j) {
      const int64_t i = e + j;
      const uint32_t byte = codes[i / 2];
      v[j] = __fmul_rn(table[i % 2 == 0 ? byte >> 4 : byte & 0xFu], absmax[i >> block_shift]);
    }
  }
};

// int2/3/4 LSB-first: code j of the chunk is bits [j*b, (j+1)*b) of its b bytes.
struct DecodeIntGroup {
  const uint8_t* codes;
  const uint16_t* scales;
  const uint8_t* zeros;
  int bits;
  int64_t row_bytes, groups;
  int group;
  __device__ void decode(int64_t r, int64_t c0, int valid, bool vec, const float*,
                         float (&v)[8]) const {
    const uint8_t* src = codes + r * row_bytes + (c0 / 8) * bits;
    uint32_t w = 0;
    if (vec && bits == 4) {
      w = *reinterpret_cast<const uint32_t*>(src);
    } else {
      const int nbytes = (valid * bits + 7) / 8;
      for (int j = 0; j < nbytes; ++j) w |= uint32_t(src[j]) << (8 * j);
    }
    const int64_t g = r * groups + c0 / group;
    const float scale = __half2float(__ushort_as_half(scales[g]));
    const int zero = zeros ? zeros[g] : 1 << (bits - 1);
    const uint32_t mask = (1u << bits) - 1;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      v[j] = __fmul_rn(float(int((w >> (j * bits)) & mask) - zero), scale);
  }
};

struct DecodeInt8 {
  const int8_t* codes;
  const uint16_t* scales;
  int64_t cols;
  __device__ void decode(int64_t r, int64_t c0, int valid, bool vec, const float*,
                         float (&v)[8]) const {
    const int8_t* src = codes + r * cols + c0;
    int8_t q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (vec) {
      *reinterpret_cast<uint2*>(q) = *reinterpret_cast<const uint2*>(src);
    } else {
      for (int j = 0; j < valid; ++j) q[j] = src[j];
    }
    const float scale = __half2float(__ushort_as_half(scales[r]));
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = __fmul_rn(float(q[j]), scale);
  }
};

struct DecodeFp8 {
  const uint8_t* codes;
  const float* scales;
  bool per_tensor, e5m2;
  int64_t cols;
  __device__ void decode(int64_t r, int64_t c0, int valid, bool vec, const float*,
                         float (&v)[8]) const {
    const uint8_t* src = codes + r * cols + c0;
    uint8_t q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (vec) {
      *reinterpret_cast<uint2*>(q) = *reinterpret_cast<const uint2*>(src);
    } else {
      for (int j = 0; j < valid; ++j) q[j] = src[j];
    }
    // fp8 -> fp16 is exact for both encodings (fewer exponent and mantissa bits).
    const float scale = scales ? scales[per_tensor ? 0 : r] : 1.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const __half h(__nv_cvt_fp8_to_halfraw(q[j], e5m2 ? __NV_E5M2 : __NV_E4M3));
      v[j] = scales ? __fmul_rn(__half2float(h), scale) : __half2float(h);
    }
  }
};

template <class D>
void launch(Dtype t, const D& d, void* out, int64_t rows, int64_t cols, bool vec, int table,
            void* stream, const char* what) {
  const int64_t chunks = rows * ((cols + 7) / 8);
  if (chunks == 0) return;
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    dequant_kernel<T, D><<<grid_for(chunks, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        d, static_cast<T*>(out), rows, cols, vec, table);
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
                       int bits, int64_t rows, int64_t cols, int group, void* out, bool vec,
                       void* stream) {
  const DecodeIntGroup d{
      codes, scales, zeros, bits, (cols * bits + 7) / 8, (cols + group - 1) / group, group};
  launch(t, d, out, rows, cols, vec, 0, stream, "dequant_int_group");
}

void dequant_int8(Dtype t, const int8_t* codes, const uint16_t* scales, int64_t rows, int64_t cols,
                  void* out, bool vec, void* stream) {
  launch(t, DecodeInt8{codes, scales, cols}, out, rows, cols, vec, 0, stream, "dequant_int8");
}

void dequant_fp8(Dtype t, bool e5m2, const uint8_t* codes, const float* scales, bool per_tensor,
                 int64_t rows, int64_t cols, void* out, bool vec, void* stream) {
  launch(t, DecodeFp8{codes, scales, per_tensor, e5m2, cols}, out, rows, cols, vec, 0, stream,
         "dequant_fp8");
}

}  // namespace kldq::kernels::cuda
