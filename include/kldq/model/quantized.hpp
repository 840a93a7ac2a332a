// Quantized checkpoints as kldq writes them (docs/FORMATS.md, "Quantized checkpoints"): each
// safetensors header names the format of every quantized layer under kFormatsKey, and
// quantization.json beside them records the plan that produced them.
#pragma once

#include <set>
#include <string>

#include "kldq/io/checkpoint.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layout.hpp"

namespace kldq::model {

// Header metadata keys (safetensors __metadata__, string values).
inline constexpr const char* kFormatsKey = "kldq.formats";  // JSON object {layer id: format}
inline constexpr const char* kVersionKey = "kldq.version";
inline constexpr const char* kPlanFile = "quantization.json";

// The layer formats named in the checkpoint's headers; empty for a plain checkpoint. IoError
// naming the file and layer when the metadata is malformed, names a layer the config does not
// have or an unknown format, is missing while packed tensors are present, or disagrees with
// quantization.json's "layers".
LayerFormats read_layer_formats(const io::Checkpoint& checkpoint, const ModelConfig& config);
// The layers that carry a `.input_scale` tensor (AWQ's explicit scales). IoError naming the tensor
// when it belongs to no quantized layer of `formats`.
std::set<std::string> read_input_scaled(const io::Checkpoint& checkpoint,
                                        const LayerFormats& formats);

}  // namespace kldq::model
