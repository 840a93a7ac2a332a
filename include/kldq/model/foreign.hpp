// Checkpoints written by other tools, read as kldq's quantized checkpoints without re-quantizing:
// compressed-tensors (llm-compressor's format, config.json "quantization_config" with
// quant_method "compressed-tensors"). docs/FORMATS.md, "Reading compressed-tensors checkpoints".
#pragma once

#include <filesystem>

#include "kldq/io/checkpoint.hpp"

namespace kldq::model {

// Opens `dir` as io::Checkpoint::open does; a compressed-tensors checkpoint is presented in
// kldq's layout (the per-layer formats as header metadata, packed tensors under kldq's names and
// dtypes), converted as each tensor is read. ConfigError naming config.json and the group or layer
// for what kldq cannot read exactly: activation quantization, sparsity, act-order indices,
// transforms, schemes without a kldq format, scales that fp16 cannot hold; and for another
// quant_method.
io::Checkpoint open_checkpoint(const std::filesystem::path& dir);

}  // namespace kldq::model
