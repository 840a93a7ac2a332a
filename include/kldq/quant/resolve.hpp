// Resolving what a quantizing task was asked for: the method and its settings (a plan's recorded
// ones under the given ones), the base format with its group, the calibration windows, the plan of
// --base or --plan checked against its model, and the device memory that quantizing in memory
// adds. Commands and experiment stages fill a MethodRequest; errors name the command-line options.
#pragma once

#include <optional>
#include <string>

#include "kldq/calib/calibration.hpp"
#include "kldq/model/residency.hpp"
#include "kldq/quant/plan.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::quant {

// The quantization method and its settings (--method, --damp, --act-order, --group) and, for
// tasks that take them, the calibration windows (--calib, --samples, --seq-len, --seed).
struct MethodRequest {
  std::string method;  // as given (--method; parse_method): "" = rtn, or the plan's method
  int group = 0;       // 0 = the format's own
  // Set when given (on the command line, or by an experiment): the rest come from a plan's
  // recorded settings, else the defaults (GptqOptions, calib::CalibrationSpec).
  std::optional<double> damp;
  std::optional<bool> act_order;
  std::string calib;
  std::optional<int64_t> samples, seq_len;
  std::optional<uint64_t> seed;
  bool gptq_given() const { return damp || act_order; }
  bool window_given() const { return samples || seq_len || seed; }
};

// r.method parsed (naming --method); none when not given.
std::optional<Method> given_method(const MethodRequest& r);
// The method's settings; `method` overrides r.method when given. ConfigError when GPTQ's
// options were given for another method. With a plan whose method_settings are of the same
// method, its settings are the defaults and the request's given options override them.
MethodOptions resolve_method(const MethodRequest& r, std::optional<Method> method,
                             const Plan* plan = nullptr);
// `base` with --group applied ("int4" + 128 -> int4_g128, "nf4" + 128 -> nf4_b128); ConfigError
// naming --group for a format without groups or a base that already names its group.
formats::FormatSpec base_format(const std::string& base, int group, const std::string& what);
// The calibration windows a calibrated method needs (none for rtn), tokenized with `model`'s
// tokenizer: ConfigError naming --calib when it is missing (checked first), when calibration
// options were given to rtn, or when the windows are longer than the model's context or hold ids
// outside its vocabulary. With a plan whose method_settings (same method) record their
// calibration, the recorded file and windows are the defaults (ConfigError naming the plan's key
// when that file is gone and no --calib is given), and a warning says what differs when the text
// or the windows are not the recorded ones.
std::optional<calib::Calibration> resolve_calibration(const MethodRequest& r, Method method,
                                                      const std::string& model,
                                                      const Plan* plan = nullptr);

// Reads a plan file (`--plan`); a plan made by `kldq plan` must come from a profile of `model`
// (the checkpoint fingerprints agree), else ConfigError naming both.
Plan read_plan_for(const std::string& plan_path, const std::string& model);
// The plan of --base or --plan for `model` (read and checked before any data; the request's
// method overrides a plan's); none when both are empty (the model as it is).
std::optional<Plan> resolve_plan(const std::string& model, const std::string& base,
                                 const std::string& plan, const MethodRequest& method);
// Raises needs.working to what quantizing in memory with `method` takes first: HQQ's fit of one
// layer, or GPTQ/AWQ's calibration states, Hessians and inputs (with `cal`).
void add_quantize_working(model::MemoryNeeds& needs, const MethodOptions& method,
                          const std::optional<calib::Calibration>& cal, const model::ModelConfig& c,
                          c10::ScalarType dtype);
// Adds the packed layers of `plan` (held beside the model's weights, block by block) to `needs`.
void add_plan_bytes(model::MemoryNeeds& needs, const Plan& plan, const model::ModelConfig& c);

}  // namespace kldq::quant
