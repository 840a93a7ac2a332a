// AWQ on one decoder block (private to the quant module; quantize_layers drives it).
#pragma once

#include <ATen/core/Tensor.h>

#include "kldq/quant/quantizer.hpp"

namespace kldq::quant {

// Block b of `m` (its layers dense, the blocks before it already quantized), on its inputs
// hidden: [N, T, H]: searches every scaling group's per-input-channel scale, then each layer's
// clipping, quantizes the layers of `formats` that have a grid, installs them in `m` and records
// them in `out`. Windows run `batch` at a time.
void awq_block(model::Decoder& m, int b, const at::Tensor& hidden,
               const model::LayerFormats& formats, const AwqOptions& o, int64_t batch,
               QuantizedLayers& out);

}  // namespace kldq::quant
