// The block-sequential driver of calibrated methods (private to the quant module).
#pragma once

#include "kldq/quant/quantizer.hpp"

namespace kldq::quant {

// quantize_layers for gptq and awq (o.method); the contract is quantize_layers'.
QuantizedLayers quantize_calibrated(model::Decoder& m, const model::LayerFormats& formats,
                                    const MethodOptions& o, const at::Tensor& calib);

}  // namespace kldq::quant
