// Synthesized checkpoints: Qwen2.5 architectures with random weights, for benchmarks at real
// sizes (no checkpoint can be downloaded) and small models for tests.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "kldq/model/config.hpp"

namespace kldq::model {

// "tiny", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b".
std::vector<std::string> synth_shape_names();
// The architecture of a named shape (ConfigError listing the names otherwise).
ModelConfig synth_config(std::string_view shape);

struct SynthOptions {
  uint64_t seed = 0;
  c10::Device device{c10::kCPU};  // where the random numbers are drawn (values differ by device)
  c10::ScalarType dtype{c10::kBFloat16};
  bool force = false;  // replace an existing output directory
};

// Writes config.json and model.safetensors to `out`, built in a temporary sibling directory
// and renamed into place. Weights: linears and embeddings ~ N(0, 0.02) (the transformers
// initializer range), biases ~ N(0, 0.02), norm weights ~ 1 + N(0, 0.02).
void synth_checkpoint(const ModelConfig& config, const std::filesystem::path& out,
                      const SynthOptions& options);

}  // namespace kldq::model
