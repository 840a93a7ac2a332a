// Raw-pointer launcher of a decode step's attention over a masked KV cache (attention_cuda.cu).
// Internal to the kernels module: no ATen types.
#pragma once

#include <cstdint>

#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {

// Whether the kernels take these heads: d 64 or 128, nq / nkv query heads per kv head (<= 8).
bool decode_attention_fits(int64_t nq, int64_t nkv, int64_t d);
// Column chunks of a cache of `capacity` columns: part holds B nq chunks (d + 2) floats.
int64_t decode_attention_chunks(int64_t capacity);

// q [B, nq, d] (one step's queries), kc, vc [B, nkv, C, d], mask [B, C] (additive: 0 or -inf),
// all contiguous in dtype t (bf16/fp16) -> out [B, nq, d]: softmax(q k^T / sqrt(d) + mask) v.
void decode_attention(Dtype t, const void* q, const void* kc, const void* vc, const void* mask,
                      float* part, void* out, int64_t B, int64_t nq, int64_t nkv, int64_t C,
                      int64_t d, void* stream);

}  // namespace kldq::kernels::cuda
