// `kldq quantize` as a library task: a checkpoint quantized by a plan (or a base format with
// layers kept in bf16) with any method, written as kldq's quantized checkpoint
// (docs/FORMATS.md, "Quantized checkpoints"). Also the first step of an export of a plan.
#pragma once

#include <string>
#include <vector>

#include "kldq/model/compute.hpp"
#include "kldq/quant/plan.hpp"
#include "kldq/quant/resolve.hpp"

namespace kldq::quant {

struct QuantizeRequest {
  std::string model, out, base, plan;  // MODEL, -o, --base or --plan
  std::vector<std::string> keep;       // --keep: layers kept in bf16 with --base
  bool force = false;                  // replace a checkpoint kldq wrote at `out`
  MethodRequest method;
  model::ComputeOptions compute;
};
// The plan `r` names (--plan, or --base with --keep and --group), its method set from --method.
Plan plan_of(const QuantizeRequest& r);
// Writes the checkpoint `r.out`; returns the result line (time, peak memories).
std::string quantize_checkpoint(const QuantizeRequest& r);

}  // namespace kldq::quant
