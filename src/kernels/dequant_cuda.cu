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
#include "decode_cuda.cuh"
#include "dequant_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

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
// [rows, cols] output; D::decode(r, c0, valid, v) fills v[0..valid) for columns c0..c0+valid-1 of
// row r, reading codes byte by byte. `table`: the 4-bit formats' code values (load_table).
template <class T, class D>
__global__ void dequant_kernel(D d, T* __restrict__ out, int64_t rows, int64_t cols,
                               CodeTable table) {
  load_table(table);
  const int64_t per_row = (cols + 7) / 8, total = rows * per_row;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / per_row, c0 = (idx - r * per_row) * 8;
    const int valid = static_cast<int>(cols - c0 < 8 ? cols - c0 : 8);
    float v[8];
    d.decode(r, c0, valid, v);
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
                                   CodeTable table) {
  load_table(table);
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
      d.decode(raw[u], v);
      store8(out + idx * 8, v, 8, true);
    }
  }
}

// Blocks of a persistent grid: enough to fill every SM of the current device a few times.
unsigned persistent_blocks(int64_t work, int threads) {
  const int sms = sm_count();
  const int64_t need = (work + threads - 1) / threads;
  return static_cast<unsigned>(need < int64_t(sms) * 8 ? (need > 0 ? need : 1) : int64_t(sms) * 8);
}

template <class D>
void launch(Dtype t, const D& d, void* out, int64_t rows, int64_t cols, bool vec, CodeTable table,
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

}  // namespace

void dequant_packed(Dtype t, const PackedView& w, void* out, bool vec, void* stream) {
  with_decoder(w, [&](const auto& d, const CodeTable& table) {
    launch(t, d, out, w.rows, w.cols, vec, table, stream, "dequant_packed");
  });
}

}  // namespace kldq::kernels::cuda
