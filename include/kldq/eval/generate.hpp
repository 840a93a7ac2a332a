// Text generation with the decoder's key/value cache: a left-padded batch of prompts prefilled
// at once, then one token per row per step, greedy or sampled (temperature, top-k, top-p in
// transformers' order), stopping per row at an end-of-sequence id.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "kldq/model/decoder.hpp"

namespace kldq::eval {

struct Sampling {
  double temperature = 0;  // 0: greedy (argmax); > 0: sample from softmax(logits / T)
  int64_t top_k = 0;       // keep the k most likely tokens (0: all)
  double top_p = 1;        // keep the smallest set whose probability reaches p (1: all)
  uint64_t seed = 0;       // the sampler's generator (CPU), so a seed reproduces on any device
};

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  Sampling sampling;
  std::vector<int64_t> stop;  // a row ends after emitting one of these (empty: never)
  bool cuda_graph = true;     // replay decode steps from a CUDA graph where the model allows
                              // (model/decode_graph.hpp); false: every step launched eagerly
};

// Wall time of the two phases (the first token's choice ends the prefill; each later step's
// tokens are read back to the host, so the times include the device's work; a greedy step
// already running when the last row stops is waited for within decode_s).
struct GenerateStats {
  double prefill_s = 0, decode_s = 0;
  int64_t prompt_tokens = 0, new_tokens = 0;  // real (unpadded) prompt tokens; tokens emitted
  // The steady state: the time of the steps after the first replayed one (a CUDA graph
  // captured: no eager step, no capture), and their number (0 without a graph).
  double replay_s = 0;
  int64_t replay_steps = 0;
};

// New tokens per prompt (each prompt a non-empty list of ids), up to and including the first
// stop id. `on_token(row, id)` is called as each token is chosen. Sampling draws from `gen` (a
// CPU generator; none: one seeded with o.sampling.seed), so successive calls sharing a generator
// continue its sequence. ConfigError when the longest prompt plus max_new_tokens exceeds the
// model's context; IoError when sampling meets logits that are not finite.
std::vector<std::vector<int64_t>> generate(
    const model::Decoder& m, const std::vector<std::vector<int64_t>>& prompts,
    const GenerateOptions& o, const std::function<void(size_t, int64_t)>& on_token = {},
    GenerateStats* stats = nullptr, at::Generator* gen = nullptr);

// The next token of each row from logits [B, V] (any float dtype): greedy, or sampled with
// `gen` (a CPU generator) after temperature, top-k and top-p filtering. -> [B] int64 (CPU).
at::Tensor choose_tokens(const at::Tensor& logits, const Sampling& s, at::Generator& gen);

// The end-of-sequence ids of a checkpoint: generation_config.json's eos_token_id when present,
// else config.json's (an id or a list); empty when neither names one.
std::vector<int64_t> stop_tokens(const std::filesystem::path& dir);

}  // namespace kldq::eval
