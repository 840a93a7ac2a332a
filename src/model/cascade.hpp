// Attention of a batch of continuations over one shared prefix (Decoder::run_continuations), and
// flash attention of a first prefill; internal to the model module.
#pragma once

#include <ATen/ATen.h>

#include "kldq/model/decoder.hpp"

namespace kldq::model {

// Causal attention of q [B, nq, T, d] over k/v [B, nkv, T, d] -> [B, T, nq * d] by flash
// attention when it applies (CUDA, fp16/bf16, d % 8 == 0, d <= 256; else an empty tensor).
at::Tensor flash_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// q [B, nq, T, d] (after RoPE), k/v [B, nkv, T, d] the rows' own tokens (causal among
// themselves), pk/pv [1, nkv, P, d] the prefix every row sees whole -> [B, T, nq * d] in q's
// dtype. Query head h reads kv head h / (nq / nkv), scale 1/sqrt(d), as SDPA with enable_gqa.
// Packed rows (B = 1, T = N tokens of several rows one after another, laid out by `packing`):
// each row's own causal part runs on the rows padded to packing.width; the prefix part runs on
// the N tokens as they are.
at::Tensor cascade_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& pk, const at::Tensor& pv,
                             const Packing* packing = nullptr);

}  // namespace kldq::model
