// The tensors a decoder checkpoint must hold for a given config: HF names, shapes and roles.
// One list serves the writer (synth), the checker (inspect) and the tests.
#pragma once

#include <ATen/core/ScalarType.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "kldq/formats/format.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layer_id.hpp"

namespace kldq::model {

// LINEAR_WEIGHT: a dense `.weight`; LINEAR_PART: a stored tensor of a packed weight
// (`.weight_packed`, `.weight_scale`, `.weight_zero`).
enum class TensorRole { EMBED, NORM, LINEAR_WEIGHT, LINEAR_PART, LINEAR_BIAS, LM_HEAD };

struct TensorSlot {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role;
  std::optional<LayerId> layer;         // set for linear weights, parts and biases
  std::optional<at::ScalarType> dtype;  // exact dtype required (formats); else any float
};

// [out, in] of projection `p` in every block.
std::vector<int64_t> linear_shape(const ModelConfig& config, Proj p);

// Every decoder linear layer of `config`, in model order (block by block, kAllProjs order).
std::vector<LayerId> linear_ids(const ModelConfig& config);

// HF layer id -> storage format of a quantized checkpoint's linear layers. Layers not listed are
// dense `.weight` tensors of any float dtype.
using LayerFormats = std::map<std::string, formats::FormatSpec>;

// In checkpoint order: embeddings; per block input norm, q,k,v,o (+biases), post norm,
// gate, up, down (+biases); final norm; lm_head unless tied. Layers in `formats` hold the
// tensors of formats::packed_layout instead of a free-dtype `.weight`; layers in `input_scaled`
// also a bf16 `.input_scale` [in] after them (AWQ's per-input-channel scale, QLinear).
std::vector<TensorSlot> expected_tensors(const ModelConfig& config,
                                         const LayerFormats& formats = {},
                                         const std::set<std::string>& input_scaled = {});

}  // namespace kldq::model
