// Attention of a batch of continuations over one shared prefix (Decoder::run_continuations),
// internal to the model module.
#pragma once

#include <ATen/ATen.h>

namespace kldq::model {

// q [B, nq, T, d] (after RoPE), k/v [B, nkv, T, d] the rows' own tokens (causal among
// themselves), pk/pv [1, nkv, P, d] the prefix every row sees whole -> [B, T, nq * d] in q's
// dtype. Query head h reads kv head h / (nq / nkv), scale 1/sqrt(d), as SDPA with enable_gqa.
at::Tensor cascade_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& pk, const at::Tensor& pv);

}  // namespace kldq::model
