// Quantization methods behind one interface, and applying a plan to a decoder in memory or to a
// checkpoint on disk. Methods that need calibration (GPTQ, AWQ) first receive each layer's inputs
// through observe(), then quantize(); RTN needs none.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "kldq/formats/packed.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/quant/plan.hpp"

namespace kldq::quant {

class Quantizer {
 public:
  virtual ~Quantizer() = default;
  virtual std::string name() const = 0;
  // True when quantize() needs observe() on the layer's inputs first.
  virtual bool needs_calibration() const { return false; }
  // x: [tokens, in]: inputs of `layer` on calibration data; may be called repeatedly.
  virtual void observe(const model::LayerId& layer, const at::Tensor& x) {}
  // w: [out, in] (any float dtype and device) -> the weight in `spec`.
  virtual formats::PackedWeight quantize(const model::LayerId& layer, const at::Tensor& w,
                                         const formats::FormatSpec& spec) = 0;
};

// The registry: "rtn". GPTQ and AWQ are UnsupportedError until they are built; anything else is
// a ConfigError naming --method.
std::unique_ptr<Quantizer> make_quantizer(std::string_view method);

// Replaces every layer of `decoder` named in `formats` by its quantized weight.
void quantize_decoder(model::Decoder& decoder, const model::LayerFormats& formats,
                      Quantizer& quantizer);

struct WriteOptions {
  bool force = false;  // replace an existing checkpoint at the output
};

// Reads the checkpoint `src` one tensor at a time, quantizes the linear layers of `plan`, and
// writes `out`: model.safetensors (packed tensors; formats in the header metadata), config.json
// and the tokenizer and other non-weight files copied, quantization.json (the plan, its resolved
// per-layer formats and the kldq version). Atomic: `out` appears complete or not at all.
void write_quantized_checkpoint(const std::filesystem::path& src, const std::filesystem::path& out,
                                const Plan& plan, Quantizer& quantizer,
                                const WriteOptions& options);

}  // namespace kldq::quant
