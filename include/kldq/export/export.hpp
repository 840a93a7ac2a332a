// Exports of quantized checkpoints to formats other tools load (docs/FORMATS.md, "Export"):
// compressed-tensors (vLLM, transformers; a directory) and GGUF (llama.cpp; one file). The source
// is a checkpoint kldq wrote (`kldq quantize`) or a plain one (every layer dense). Exact where the
// target has the same codes and scales; otherwise the layer is re-quantized and the result says so.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "kldq/core/vocabulary.hpp"
#include "kldq/formats/packed.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layout.hpp"

namespace kldq::exporting {

enum class Target { COMPRESSED_TENSORS, GGUF };
inline constexpr Vocabulary<Target, 2> kTargets{
    "export target",
    {{{Target::COMPRESSED_TENSORS, "compressed-tensors"}, {Target::GGUF, "gguf"}}}};
Target parse_target(const std::string& text, const std::string& what);
const char* target_name(Target t);

// A checkpoint to export: its config, tensors and the format of every quantized layer. AWQ's input
// scales are folded away at construction (src/export/fold.cpp; docs/FORMATS.md, "Export"): the
// Source presents a model of the same function with no `.input_scale` tensors.
class Source {
 public:
  // IoError/ConfigError naming `dir` when it does not load (checked as `kldq eval` checks it).
  explicit Source(const std::filesystem::path& dir);
  const std::filesystem::path& dir() const { return dir_; }
  const model::ModelConfig& config() const { return config_; }
  const io::Checkpoint& checkpoint() const { return ck_; }
  const model::LayerFormats& formats() const { return formats_; }
  // The layers whose input scales were folded, and where each went (layer -> "into ..."); a
  // folded Source's quantized weights are no longer the original model's times a rounding.
  const std::map<std::string, std::string>& folded() const { return folded_; }
  // Every tensor of the checkpoint, in kldq's order (embeddings, blocks, norm, head).
  const std::vector<model::TensorSlot>& slots() const { return slots_; }
  // A quantized layer's stored tensors (views of the file).
  formats::PackedWeight packed(const std::string& layer) const;
  // A stored tensor (a view of the file; a folded linear weight or bias in its stored dtype, a
  // folded norm weight in fp32), IoError naming it when it holds NaN or Inf.
  at::Tensor tensor(const std::string& name) const;
  // The same in fp32, without the rounding to the stored dtype a folded tensor would get.
  at::Tensor tensor_f32(const std::string& name) const;

 private:
  std::filesystem::path dir_;
  model::ModelConfig config_;
  io::Checkpoint ck_;
  model::LayerFormats formats_;
  std::vector<model::TensorSlot> slots_;
  std::map<std::string, std::string> folded_;
  std::map<std::string, at::Tensor> folded_tensors_;            // name -> fp32
  std::map<std::string, formats::PackedWeight> folded_packed_;  // layer -> rescaled rows

  void fold_input_scales(const std::set<std::string>& scaled);
};

struct ExportOptions {
  bool force = false;              // replace an existing output kldq wrote
  std::filesystem::path original;  // the unquantized checkpoint, when known: GGUF re-quantizes
                                   // from its weights instead of kldq's dequantized ones
  std::string name;                // the model's name (GGUF general.name); default: the source's
};

// What an export did: the layers written exactly and those re-quantized (layer -> "from -> to").
struct ExportReport {
  int exact_layers = 0;
  std::map<std::string, std::string> requantized;
  std::map<std::string, std::string> folded;  // Source::folded()
  uint64_t bytes = 0;                         // size of the written weights
};

// ConfigError, before any work, for what `target` would refuse of a plan resolved to `formats`
// on a model of `config` (unexportable formats, split fused groups).
void check_exportable(Target target, const model::ModelConfig& config,
                      const model::LayerFormats& formats, const std::string& what);

// Why a layer of `spec` with `in` input columns has no compressed-tensors equivalent, with the
// nearest format that has one; "" when it has one. `in` 0: the format alone (no shape checks).
std::string compressed_tensors_unsupported(const formats::FormatSpec& spec, int64_t in);

// Writes a compressed-tensors checkpoint directory (config.json with quantization_config,
// model.safetensors, tokenizer and other files copied). ConfigError naming the layers when a
// format has no compressed-tensors equivalent or a fused group (q/k/v, gate/up) mixes schemes.
ExportReport export_compressed_tensors(const Source& src, const std::filesystem::path& out,
                                       const ExportOptions& options);

// Writes one GGUF file for llama.cpp (architecture, tokenizer, tensors with per-tensor types).
ExportReport export_gguf(const Source& src, const std::filesystem::path& out,
                         const ExportOptions& options);

}  // namespace kldq::exporting
