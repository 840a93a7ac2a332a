// Decoder forward pass, operation for operation as transformers' Qwen2/Llama modeling code, so
// that logits agree to fp32 rounding on CPU and to bf16 rounding noise on GPUs.
#include "kldq/model/decoder.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <optional>
#include <tuple>

#include "cascade.hpp"
#include "kldq/core/error.hpp"
#include "kldq/kernels/fused.hpp"

namespace kldq::model {

namespace {

// A block's output x + delta (its MLP's residual add). When autograd records, the residual sum
// is saved for the norm's backward: add out of place.
at::Tensor add_residual(at::Tensor x, const at::Tensor& delta) {
  return x.requires_grad() ? x + delta : x.add_(delta);
}

// SDPA of q [B, nq, T, d] over k, v [B, nkv, S, d] -> [B, T, nq d]: causal when there is no
// mask (then S = T), else the additive mask [B, 1, T, S]; GQA inside SDPA (no repeated K/V
// copies); scale 1/sqrt(d).
at::Tensor attention_sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& mask) {
  const at::Tensor out = at::scaled_dot_product_attention(
      q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/!mask, /*scale=*/std::nullopt,
      /*enable_gqa=*/k.size(1) != q.size(1));
  return out.transpose(1, 2).reshape({q.size(0), q.size(2), q.size(1) * q.size(3)});
}

}  // namespace

const Decoder::RopeTable& Decoder::rope(int64_t len) const {
  // A table built under InferenceMode holds inference tensors, which autograd cannot save for
  // backward (RoPE's product with cos/sin needs them): outside InferenceMode it is rebuilt.
  const bool usable = c10::InferenceMode::is_enabled() || !rope_.cos.is_inference();
  if (rope_.len >= len && usable) return rope_;
  // As transformers' default RoPE: inv_freq = 1 / theta^(2i/d) and angles = pos * inv_freq in
  // fp32; cos/sin of [angles, angles] (rotate-half layout) computed in fp32, then cast to the
  // compute dtype. Positions beyond 2^24 would lose precision in fp32; contexts are far shorter.
  const int64_t d = config_.head_dim;
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
  at::Tensor exponent =
      at::arange(0, d, 2, f32.dtype(at::kLong)).to(at::kFloat) / static_cast<double>(d);
  at::Tensor inv_freq = at::pow(config_.rope_theta, exponent).reciprocal();  // [d/2]
  at::Tensor pos = at::arange(len, f32.dtype(at::kLong)).to(at::kFloat);     // [len]
  at::Tensor angles = at::outer(pos, inv_freq);                              // [len, d/2]
  at::Tensor emb = at::cat({angles, angles}, -1);                            // [len, d]
  rope_.cos = emb.cos().to(dtype_);                                          // [len, d]
  rope_.sin = emb.sin().to(dtype_);
  rope_.len = len;
  return rope_;
}

at::Tensor Decoder::attention(int i, const at::Tensor& h) const {
  return attend(i, h, nullptr);
}

at::Tensor Decoder::attend(int i, const at::Tensor& h, KvCache* cache,
                           const SharedPrefix* shared) const {
  const Block& b = running(i);
  const int64_t B = h.size(0), T = h.size(1), d = config_.head_dim;
  const int64_t nq = config_.num_heads, nkv = config_.num_kv_heads;
  for (Proj p : {Proj::Q, Proj::K, Proj::V}) observe(i, p, h);
  at::Tensor q, k, v;  // [B, T, q_dim], [B, T, kv_dim], [B, T, kv_dim]
  // The fused product when it reads the stored weight (dense, or a decode step's packed kernel);
  // a packed prefill dequantizes each member into the workspace as before.
  if (b.qkv.defined() && b.qkv.direct(h)) {
    auto parts = b.qkv.forward(h).split_with_sizes({nq * d, nkv * d, nkv * d}, -1);
    q = parts[0], k = parts[1], v = parts[2];
  } else {
    q = b.linears[static_cast<int>(Proj::Q)].forward(h);
    k = b.linears[static_cast<int>(Proj::K)].forward(h);
    v = b.linears[static_cast<int>(Proj::V)].forward(h);
  }
  // cos/sin [T, d] at positions 0..T-1, or the cache's per-row [B, T, d], or the continuation's
  const RopeTable* table = shared || cache ? nullptr : &rope(T);
  const at::Tensor cos = shared ? shared->cos : cache ? cache->cos : table->cos.narrow(0, 0, T);
  const at::Tensor sin = shared ? shared->sin : cache ? cache->sin : table->sin.narrow(0, 0, T);
  at::Tensor out;  // [B, T, q_dim]
  if (cache && cache->mask.defined()) {
    // A step over the cache: RoPE and the append at the step's columns in one pass (a device
    // index, so a CUDA graph replays the step at the next column), then attention over all
    // capacity columns, masked (fixed shapes from step to step: decoder_cache.cpp).
    q = kernels::rope_append(q.view({B, T, nq, d}), k.view({B, T, nkv, d}), v.view({B, T, nkv, d}),
                             cos, sin, cache->k[i], cache->v[i], cache->cols);
    out = attention_sdpa(q.transpose(1, 2), cache->k[i], cache->v[i], cache->mask);
  } else {
    // [B, T, n, d] -> rope -> [B, n, T, d] for SDPA
    q = kernels::rope(q.view({B, T, nq, d}), cos, sin).transpose(1, 2);
    k = kernels::rope(k.view({B, T, nkv, d}), cos, sin).transpose(1, 2);
    v = v.view({B, T, nkv, d}).transpose(1, 2);
    if (shared) {
      const int64_t P = shared->cache->len;
      out = cascade_attention(q, k, v, shared->cache->k[i].narrow(2, 0, P),
                              shared->cache->v[i].narrow(2, 0, P),
                              shared->packing.slot.defined() ? &shared->packing : nullptr);
    } else if (cache) {
      // A first unpadded prefill: attention over its own tokens alone, causal, no mask. Its
      // lengths vary from call to call: flash attention (no per-shape planning).
      cache->k[i].index_copy_(2, cache->cols, k);
      cache->v[i].index_copy_(2, cache->cols, v);
      out = flash_causal(q, k, v);
    }
    if (!out.defined()) out = attention_sdpa(q, k, v, std::nullopt);
  }
  observe(i, Proj::O, out);
  return b.linears[static_cast<int>(Proj::O)].forward(out);
}

at::Tensor Decoder::mlp(int i, const at::Tensor& h) const {
  const Block& b = running(i);
  observe(i, Proj::GATE, h);
  observe(i, Proj::UP, h);
  at::Tensor act;  // [B, T, I]
  if (b.gate_up.defined() && b.gate_up.direct(h)) {
    act = b.gate_up.swiglu(h);
  } else {
    act = kernels::silu_mul(b.linears[static_cast<int>(Proj::GATE)].forward(h),
                            b.linears[static_cast<int>(Proj::UP)].forward(h));
  }
  observe(i, Proj::DOWN, act);
  return b.linears[static_cast<int>(Proj::DOWN)].forward(act);
}

at::Tensor Decoder::embed(const at::Tensor& ids) const {
  if (ids.dim() != 2 || ids.scalar_type() != at::kLong)
    throw InternalError("Decoder::embed expects int64 ids of shape [B, T]");
  check_token_ids(ids);
  return at::embedding(embed_, ids.to(device_));
}

void Decoder::check_token_ids(const at::Tensor& ids) const {
  // Ids from the host are checked there (no device sync): an id past the embedding would reach
  // libtorch's indexing, whose message names no input. Callers validate their own inputs first;
  // this is the last line.
  if (!ids.device().is_cpu() || ids.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(ids);
  const int64_t l = lo.item<int64_t>(), h = hi.item<int64_t>();
  if (l < 0 || h >= embed_.size(0))
    throw ConfigError(fmt::format("token id {} is outside the model's vocabulary [0, {})",
                                  l < 0 ? l : h, embed_.size(0)));
}

at::Tensor Decoder::block(int i, const at::Tensor& hidden) const {
  return run_block(i, hidden, nullptr);
}

at::Tensor Decoder::run_block(int i, const at::Tensor& hidden, KvCache* cache,
                              const SharedPrefix* shared) const {
  auto [x, delta] = block_parts(i, hidden, at::Tensor(), cache, shared);
  return add_residual(x, delta);
}

std::pair<at::Tensor, at::Tensor> Decoder::block_parts(int i, const at::Tensor& hidden,
                                                       const at::Tensor& delta, KvCache* cache,
                                                       const SharedPrefix* shared) const {
  check(i >= 0 && i < num_blocks(), fmt::format("block index {} out of range", i));
  const Block& b = running(i);
  const double eps = config_.rms_norm_eps;
  // Out of place: callers cache block inputs and must get them back unchanged.
  at::Tensor residual = hidden, normed;
  if (delta.defined())
    std::tie(residual, normed) = kernels::add_rms_norm(hidden, delta, b.input_norm, eps);
  else
    normed = kernels::rms_norm(hidden, b.input_norm, eps);
  auto [x, h] = kernels::add_rms_norm(residual, attend(i, normed, cache, shared), b.post_norm, eps);
  return {x, mlp(i, h)};
}

// The cached paths chain the blocks so: each block's MLP add happens in the next block's input
// norm, one kernel per block fewer than run_block's add (a decode step is ~10 short kernels per
// block, each costing its launch).
at::Tensor Decoder::chain_blocks(const at::Tensor& hidden, KvCache* cache,
                                 const SharedPrefix* shared) const {
  at::Tensor x = hidden, delta;
  for (int i = 0; i < num_blocks(); ++i)
    std::tie(x, delta) = block_parts(i, x, delta, cache, shared);
  return delta.defined() ? add_residual(x, delta) : x;
}

at::Tensor Decoder::run_blocks(int begin, int end, at::Tensor hidden) const {
  check(0 <= begin && begin <= end && end <= num_blocks(), "block range out of bounds");
  for (int i = begin; i < end; ++i) hidden = block(i, hidden);
  return hidden;
}

at::Tensor Decoder::final_norm(const at::Tensor& hidden) const {
  return kernels::rms_norm(hidden, final_norm_, config_.rms_norm_eps);
}

at::Tensor Decoder::logits(const at::Tensor& normed) const {
  return at::linear(normed, lm_head_);
}

at::Tensor Decoder::head(const at::Tensor& hidden) const {
  return logits(final_norm(hidden));
}

at::Tensor Decoder::forward(const at::Tensor& ids) const {
  if (ids.size(1) > config_.max_position_embeddings)
    throw ConfigError(fmt::format("sequence length {} exceeds max_position_embeddings {}",
                                  ids.size(1), config_.max_position_embeddings));
  return head(run_blocks(0, num_blocks(), embed(ids)));
}

}  // namespace kldq::model
