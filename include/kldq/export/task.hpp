// `kldq export` as a library task: a quantized checkpoint, or a model quantized first by a plan
// or a base format (into a temporary beside the output), written as compressed-tensors or GGUF
// (docs/FORMATS.md, "Export"). The experiment runner's export stages call it.
#pragma once

#include <string>

#include "kldq/quant/task.hpp"

namespace kldq::exporting {

struct ExportRequest {
  quant::QuantizeRequest source;  // MODEL, and --plan/--base to quantize it first; out, force
  std::string to;                 // compressed-tensors | gguf
};
// Writes `r.source.out` (a directory for compressed-tensors, a file for gguf); returns the
// result line.
std::string export_checkpoint(const ExportRequest& r);

}  // namespace kldq::exporting
