// The profile's passes (internal to the profile module): per-token KL scoring of a group of
// states against the reference, the model's layers in their dense and quantized states, the
// cached passes over all windows, and one group of units run block-major.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "kldq/model/decoder.hpp"
#include "kldq/profile/profile.hpp"

namespace kldq::profile::detail {

using model::Decoder;
using model::LayerId;
using model::QLinear;

// Per-token KL and top-1 agreement, accumulated over batches.
struct Scores {
  std::vector<at::Tensor> kl, top1;
  KlStats stats() const;
};

// KL of several final hidden states `hs[k]` [B, T, H] of `m` against the reference's `h_ref`,
// positions 0..T-2 (each predicts the next calibration token), through model::score_rows: LM
// heads a chunk of positions at a time, each chunk's reference logits computed once and shared
// by every state (scoring units in groups removes most of the reference's share). Each state is
// normalised once, over all its windows, before its chunks.
void score(const Decoder& m, const std::vector<at::Tensor>& hs, const at::Tensor& h_ref,
           const at::Tensor& ids, int64_t chunk, std::vector<Scores>& out);

// The model's layers in two states. A quantized state is written into the dense weight in
// place (the packed layer's dequantized weight, exactly what its forward multiplies by), the
// original kept aside until restored: the decoder keeps its fused q/k/v and gate/up GEMMs and
// runs no dequantization per forward, and every state runs the reference's arithmetic. A layer
// with an input scale ((x / s) W^T) is swapped in whole instead, since folding s into W would
// round differently. The weights written are the running ones (Decoder::live_linear): a streamed
// block's device copy, so every change is undone before the loop leaves the block.
struct States {
  model::LayerMap<QLinear> dense, quantized;  // the model's own layers; quantized kept where
                                              // their block's weights are kept
  model::LayerMap<at::Tensor> saved;          // originals of the layers now quantized
  Decoder* model = nullptr;                   // for the destructor's swaps
  States() = default;
  States(const States&) = delete;
  States& operator=(const States&) = delete;
  ~States();  // the model is returned dense also when a pass throws
  // `ids` quantized (quant) or dense; a layer already so is left alone.
  void set(Decoder& m, const std::vector<LayerId>& ids, bool quant);
};

// The seven projections of block b.
std::vector<LayerId> block_layers(int b);

// Runs every window through the model, block by block (each block over all windows, a batch at a
// time), in the dense state or, with `quantized`, the fully quantized one; fills `inputs` (block
// inputs, when not null; in host memory with `on_host`) and `final` ([N, T, H]). Block-major, a
// block is quantized in place only while it runs, so the originals set aside are one block's.
void cache_pass(Decoder& m, States& st, bool quantized, const at::Tensor& ids, int64_t batch,
                std::vector<at::Tensor>* inputs, bool on_host, at::Tensor& final);

// One group of units on windows [w, w + B): each unit's final hidden state [B, T, H]. Block-major:
// block b runs for every unit that has reached it (in the base state: dense for quantize-one,
// quantized for restore-one), with the unit's own layers flipped while its first block runs. A
// unit starts at its block from the cached input, or (naive) at block 0 from the embedding.
std::vector<at::Tensor> run_group(Decoder& m, States& st, const std::vector<Unit>& units,
                                  const std::vector<at::Tensor>& inputs, const at::Tensor& ids,
                                  int64_t w, int64_t B, const Options& o);

}  // namespace kldq::profile::detail
