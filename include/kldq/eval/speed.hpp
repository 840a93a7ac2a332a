// `kldq eval --speed`: prefill and decode throughput of the evaluated model (issue 20's third
// axis beside quality and memory), measured with the KV-cache generator on fixed random prompts.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "kldq/model/decoder.hpp"
#include "kldq/model/residency.hpp"

namespace kldq::eval {

// The fixed protocol: prompts of 128 random ids (seeded), 256 new tokens with end-of-sequence
// ignored, greedy, at batch 1 and 16.
struct SpeedProtocol {
  int64_t prompt = 128, new_tokens = 256;
  std::vector<int64_t> batches{1, 16};
};

// ConfigError naming `what` and max_position_embeddings when prompt + new tokens do not fit the
// context.
void check_speed_protocol(const model::ModelConfig& c, const SpeedProtocol& p,
                          const std::string& what = "--speed");
// Device bytes of the largest batch's cache and prefill.
uint64_t speed_working(const model::ModelConfig& c, const SpeedProtocol& p, c10::ScalarType dtype);
// Runs the protocol on `m` (a short warm-up first, untimed) and returns
// {"prompt", "new_tokens", "b<N>": {"prefill_tokens_per_second", "decode_tokens_per_second",
// "prefill_s", "decode_s"}}, "b<N>" also with "replayed_step_ms" and
// "replayed_decode_tokens_per_second" when the steps replayed a CUDA graph;
// `summary` gets one line per batch.
nlohmann::json measure_speed(const model::Decoder& m, const SpeedProtocol& p, std::string& summary);

}  // namespace kldq::eval
