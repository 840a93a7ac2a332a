// Batched log-likelihoods of token sequences, the machinery MMLU and the zero-shot tasks share:
// sequences right-padded into one forward, optionally as continuations of tokens already in a
// KV cache (a prompt's shared prefix run once), and the fp32 log-softmax read at chosen positions.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kldq/model/decoder.hpp"

namespace kldq::eval {

// One sequence of a batch: its input tokens, how many of them (from the start) are already in
// the cache row it continues, and how many of its last positions are read.
struct ScoredSequence {
  const std::vector<int32_t>* ids = nullptr;
  int64_t skip = 0;
  int64_t scored = 1;
};

// A cache of one row per entry of `rows` (a row of `prefix` each, keys and values of its first
// `prefix.len` columns copied), with room for `capacity` columns and `prefix`'s padding.
model::Decoder::KvCache expand_cache(const model::Decoder& m, const model::Decoder::KvCache& prefix,
                                     const std::vector<int64_t>& rows, int64_t capacity);

// Where the sequences' skipped tokens are: nowhere (skips 0), a cache of one row per sequence
// (`rows`, extended by the forward), or one unpadded row every sequence continues (`shared`,
// skips all equal to its length; Decoder::run_continuations).
struct Continued {
  model::Decoder::KvCache* rows = nullptr;
  const model::Decoder::KvCache* shared = nullptr;
};

// Runs every sequence's tokens after its `skip` ones, right-padded with token 0 (causal
// attention keeps padding out of every real position; continuations of a shared prefix run
// packed, without padding), as continuations of `from`. At each
// sequence's last `scored` positions, sequence by sequence (R rows in all), reads the
// log-softmax over the vocabulary, computed in fp32, at the columns `columns` [R, k] int64
// names: returns [R, k] double on the CPU.
at::Tensor scored_logprobs(const model::Decoder& m, const std::vector<ScoredSequence>& seqs,
                           Continued from, const at::Tensor& columns);

// The width T of a right-padded batch [n, T] of whole inputs (no cached prefix) whose longest
// input runs `longest` tokens: on CUDA rounded up to a multiple of 64 within the model's context
// `ctx` (attention backends that plan per shape, as cuDNN's SDPA does, then plan for few
// widths); `longest` on other devices. scored_logprobs pads to it and the memory estimates count
// it.
int64_t padded_width(int64_t longest, int64_t ctx, bool cuda);

// The longest token prefix all `seqs` share, leaving each its scored positions and at least one
// token of its own.
int64_t common_prefix(const std::vector<ScoredSequence>& seqs);

}  // namespace kldq::eval
