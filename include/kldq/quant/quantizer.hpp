// Quantization methods (rtn, hqq, gptq, awq) behind one entry point, quantize_layers, and
// applying their result to a decoder in memory or writing it as a checkpoint. RTN and HQQ
// quantize each weight on its own; GPTQ and AWQ run the calibration windows through the model block
// by block, each block fed by the already quantized blocks before it (docs/PROTOCOLS.md,
// "Calibrated quantization").
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>

#include "kldq/calib/calibration.hpp"
#include "kldq/formats/packed.hpp"
#include "kldq/io/document.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/quant/gptq.hpp"
#include "kldq/quant/hqq.hpp"
#include "kldq/quant/method.hpp"
#include "kldq/quant/plan.hpp"

namespace kldq::quant {

struct AwqOptions {
  int grid = 20;            // scale exponents alpha = 0, 1/grid, ..., (grid - 1)/grid
  int clip_steps = 20;      // clipping ratios 1, 1 - max_shrink/clip_steps, ..., 1 - max_shrink
  double max_shrink = 0.5;  // the largest fraction of a group's maximum clipped away
};

struct MethodOptions {
  Method method = Method::RTN;
  HqqOptions hqq;
  GptqOptions gptq;
  AwqOptions awq;
  int64_t batch = 8;  // calibration windows per forward
};

// Device bytes of quantizing with `o` on N calibration windows of T tokens (none for rtn): each
// block's weights plus its packed layers of `formats`, the calibration hidden states, one block's
// forward, the largest Hessian and GPTQ problem in fp32, and AWQ's cached layer inputs.
model::MemoryNeeds memory_needs(model::MemoryNeeds weights, const model::ModelConfig& c,
                                const model::LayerFormats& formats, const MethodOptions& o,
                                int64_t N, int64_t T, c10::ScalarType dtype);

// ConfigError unless every layer of `formats` suits `method`: hqq needs _fz int formats (or a
// dense one for restored layers) and the other methods none; the message names the layer and
// the format to use instead.
void check_formats(Method method, const model::LayerFormats& formats);
// The format `method` makes of the format named `format`: an int2/3/4 group format's _fz
// variant for hqq (the sweeps of experiment files name one base for every method), else
// `format` itself (by its canonical name).
std::string method_format(Method method, const std::string& format);
// A calibration-free method's packed weight of w: [out, in] (rtn, and the casts of dense
// formats for every method; hqq on w's device).
// `what` names the layer in errors.
formats::PackedWeight quantize_weight(const at::Tensor& w, const formats::FormatSpec& spec,
                                      const MethodOptions& options, const std::string& what);

// The method and its settings as recorded in artifacts: {"method", "gptq": {damp, block,
// act_order} or "awq": {grid, clip_steps, max_shrink} or "hqq": {lp_norm, beta, iters,
// round_zero (null: 4 bits only)}, "calibration": `calibration` when given}.
nlohmann::json method_json(const MethodOptions& options,
                           const std::optional<calib::CalibrationIdentity>& calibration);

// A recorded method_json read back: the settings, and the calibration windows' identity when
// recorded (calib::calibration_from_json). ConfigError naming the file and the key path for
// anything else or out of range.
struct RecordedMethod {
  MethodOptions options;
  std::optional<calib::CalibrationIdentity> calibration;
};
RecordedMethod method_from_json(const io::Doc& d);
RecordedMethod method_from_json(const nlohmann::json& j, const std::string& file);  // at the root

// One layer's quantized form: its stored weight and, for AWQ, the per-input-channel scale the
// layer divides its input by (QLinear::set_input_scale).
struct QuantizedLayer {
  formats::PackedWeight packed;
  at::Tensor input_scale;  // [in] fp32 holding bf16 values, or undefined
};
using QuantizedLayers = model::LayerMap<QuantizedLayer>;

// Quantizes every layer of `model` named in `formats` with the method (rtn: from the weights
// alone; gptq, awq: on `calib`, [N, T] int64 windows, required for them). Dense formats (bf16,
// fp16) are plain casts: a restored layer keeps its original weight and inputs. Calibrated
// methods need a format with a grid (formats::has_grid) for every other layer: UnsupportedError
// naming the layer before any work otherwise. `model` must be unquantized and is returned as it
// was.
QuantizedLayers quantize_layers(model::Decoder& model, const model::LayerFormats& formats,
                                const MethodOptions& options, const at::Tensor& calib = {});

// Replaces the layers of `model` named in `layers` by their quantized form and fuses the groups
// whose members now agree (Decoder::fuse_groups), block by block. `layers` is taken by value and
// emptied as it goes: a block's replaced layers are released as soon as its groups are fused, so
// fusing costs one block's groups at a time (pass a temporary, or std::move).
void apply_layers(model::Decoder& model, QuantizedLayers layers);

// Files of a checkpoint directory that are not weights (config, tokenizer, generation config):
// copied into the checkpoints kldq writes. Not quantization.json, SHA256SUMS (checksums of the
// source's files), hidden files or weights.
bool companion_file(const std::filesystem::path& p);

struct WriteOptions {
  bool force = false;              // replace an existing checkpoint at the output
  c10::Device device = c10::kCPU;  // where hqq fits each streamed weight
};

// Quantizes the checkpoint `src` with `plan` and writes `out`: model.safetensors (packed tensors,
// formats in the header metadata, AWQ's `.input_scale` tensors), config.json and the tokenizer
// and other non-weight files copied, quantization.json (the plan, its resolved per-layer formats,
// the method's settings and calibration identity when given, the kldq version). RTN streams the
// checkpoint a tensor at a time on the CPU; calibrated methods quantize `decoder` (loaded from
// `src` by the caller, on its compute device) first. Atomic: `out` appears complete or not at all.
struct CalibratedSource {
  model::Decoder* decoder = nullptr;
  at::Tensor calib;  // [N, T] int64
  std::optional<calib::CalibrationIdentity> identity;
};
void write_quantized_checkpoint(const std::filesystem::path& src, const std::filesystem::path& out,
                                const Plan& plan, const MethodOptions& method,
                                const CalibratedSource& calibrated, const WriteOptions& options);

}  // namespace kldq::quant
