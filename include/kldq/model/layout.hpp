// The tensors a decoder checkpoint must hold for a given config: HF names, shapes and roles.
// One list serves the writer (synth), the checker (inspect) and the tests.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kldq/model/config.hpp"
#include "kldq/model/layer_id.hpp"

namespace kldq::model {

enum class TensorRole { EMBED, NORM, LINEAR_WEIGHT, LINEAR_BIAS, LM_HEAD };

struct TensorSlot {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role;
  std::optional<LayerId> layer;  // set for linear weights and biases
};

// In checkpoint order: embeddings; per block input norm, q,k,v,o (+biases), post norm,
// gate, up, down (+biases); final norm; lm_head unless tied.
std::vector<TensorSlot> expected_tensors(const ModelConfig& config);

}  // namespace kldq::model
