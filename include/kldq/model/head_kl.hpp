// The one chunked "LM head + per-token KL" scorer, shared by the profile (several states of one
// model against its reference, docs/PROTOCOLS.md "Sensitivity profile") and eval's perplexity (a
// model against an optional reference model, "Perplexity", "KL divergence"): rows of final hidden
// states become logits a chunk at a time (never a [rows x vocab] tensor for more than a chunk),
// and each chunk goes through kernels::token_kl.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "kldq/kernels/kl.hpp"
#include "kldq/model/decoder.hpp"

namespace kldq::model {

// Final hidden states of N positions and the decoder whose head scores them.
struct HiddenRows {
  const Decoder* model = nullptr;
  at::Tensor rows;  // [N, H] compute dtype, on model's device
  // true: rows already through model->final_norm (the caller normalised each state once, over
  // all its rows): logits() per chunk; false: head() per chunk, the final norm included.
  bool normed = false;
  at::Tensor logits(int64_t start, int64_t len) const;  // rows [start, start + len) -> [len, V]
};

// Called with state k's scores of one chunk of rows (chunks in row order).
using ChunkScoresFn = std::function<void(size_t k, const kernels::TokenKl& scores)>;

// Scores `states` (each [N, H]) against `reference` (null: none), `chunk` rows at a time. Per
// chunk the reference's logits are computed once and shared by every state (for a 1.5B model the
// LM head is a third of a profile unit's work), then each state's logits, and
// kernels::token_kl(state's, reference's moved to the state's device, target's chunk) goes to
// fn(k, ...). Without a reference only TokenKl::nll is defined: -log p(target) from an fp32
// log-softmax of the chunk. target: [N] int64 on the states' device.
void score_rows(const std::vector<HiddenRows>& states, const HiddenRows* reference,
                const at::Tensor& target, int64_t chunk, const ChunkScoresFn& fn);

}  // namespace kldq::model
