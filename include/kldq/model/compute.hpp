// What a task computes on: the device, dtype, threads and GPU memory budget a command or an
// experiment stage asks for (ComputeOptions), turned into run contexts, one per GPU of --gpus, and
// into the residency decision of model::plan_memory within that budget.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "kldq/core/context.hpp"
#include "kldq/model/residency.hpp"

namespace kldq::model {

// Set by --device, --dtype, --threads, --max-gpu-memory and --resident-blocks (an experiment's
// max_gpu_memory too); errors name those options.
struct ComputeOptions {
  std::string device;  // "" = cuda when present, else cpu
  std::string dtype;   // "" = bf16 on cuda, fp32 on cpu
  int threads = 0;
  std::string max_gpu_memory;  // "" = no cap; "22GiB", "24GB", "22" (GiB)
  int resident_blocks = -1;    // -1: as many as the budget allows
};

// The run's context; applies --threads and --max-gpu-memory.
RunContext context_from(const ComputeOptions& opts, uint64_t seed = 0);
// `--gpus all | I,J,...`: one context per CUDA device named (CUDA's numbering: `--gpus 0` is the
// first GPU alone, as the default on a CUDA machine), each as context_from gives it with
// --max-gpu-memory applied per device; "" is context_from's one context. ConfigError for no CUDA
// device, an index out of range, one given twice, other text, or --device given as well.
std::vector<RunContext> contexts_from(const ComputeOptions& opts, const std::string& gpus);
// Where a command's weights and caches live (model::plan_memory): on CUDA within
// --max-gpu-memory (default: the device's free memory less 5 %), on the CPU all resident;
// --resident-blocks caps the resident blocks on either. Logs the decision in one line when
// anything streams or moves to the host; `lower` names the options that lower the need.
MemoryPlan plan_residency(const RunContext& ctx, const ComputeOptions& opts,
                          const MemoryNeeds& needs, const std::string& lower);
// What an experiment's stages are keyed by besides their inputs: {"device": "cuda"|"cpu",
// "dtype": "bf16"|...}.
nlohmann::json compute_tag(const RunContext& ctx);

}  // namespace kldq::model
