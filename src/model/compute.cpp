// Compute options into run contexts and residency decisions (model/compute.hpp).
#include "kldq/model/compute.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <sstream>

#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"

namespace kldq::model {

MemoryPlan plan_residency(const RunContext& ctx, const ComputeOptions& opts,
                          const MemoryNeeds& needs, const std::string& lower) {
  uint64_t budget = kNoBudget;  // the CPU: host memory is the limit, not planned here
  if (ctx.device.is_cuda())
    budget = opts.max_gpu_memory.empty() ? device_free_bytes(ctx.device) / 20 * 19
                                         : parse_size(opts.max_gpu_memory, "--max-gpu-memory");
  const MemoryPlan plan = plan_memory(needs, budget, opts.resident_blocks, lower);
  if (plan.any_streamed() || plan.caches_on_host) log::info("{}", plan.describe(needs));
  return plan;
}

RunContext context_from(const ComputeOptions& opts, uint64_t seed) {
  // Parsed first: a malformed size is a usage error whatever the device.
  const uint64_t cap =
      opts.max_gpu_memory.empty() ? 0 : parse_size(opts.max_gpu_memory, "--max-gpu-memory");
  RunContext ctx = make_context(opts.device, opts.dtype, seed, opts.threads);
  if (cap) limit_device_memory(ctx.device, cap, "--max-gpu-memory " + opts.max_gpu_memory);
  return ctx;
}

std::vector<RunContext> contexts_from(const ComputeOptions& opts, const std::string& gpus) {
  if (gpus.empty()) return {context_from(opts)};
  if (!opts.device.empty())
    throw ConfigError(
        fmt::format("--gpus {} and --device {}: give one of them", gpus, opts.device));
  const int count = cuda_device_count();
  if (count == 0)
    throw ConfigError(
        fmt::format("--gpus {}: no CUDA device (this build or machine has none)", gpus));
  std::vector<int> indices;
  if (gpus == "all") {
    for (int i = 0; i < count; ++i) indices.push_back(i);
  } else {
    const std::string bad =
        fmt::format("--gpus {}: expected all or device indices such as 0,2,3", gpus);
    if (gpus.back() == ',') throw ConfigError(bad);
    std::istringstream in(gpus);
    for (std::string item; std::getline(in, item, ',');) {
      if (item.empty() || item.size() > 4 || item.find_first_not_of("0123456789") != item.npos)
        throw ConfigError(bad);
      const int i = std::stoi(item);
      if (i >= count)
        throw ConfigError(
            fmt::format("--gpus {}: no CUDA device {} (this machine has {})", gpus, i, count));
      if (std::find(indices.begin(), indices.end(), i) != indices.end())
        throw ConfigError(fmt::format("--gpus {}: device {} given twice", gpus, i));
      indices.push_back(i);
    }
  }
  std::vector<RunContext> out;
  for (int i : indices) {
    ComputeOptions one = opts;
    one.device = fmt::format("cuda:{}", i);
    out.push_back(context_from(one));
  }
  return out;
}

nlohmann::json compute_tag(const RunContext& ctx) {
  return {{"device", ctx.device.is_cuda() ? "cuda" : "cpu"}, {"dtype", dtype_name(ctx.dtype)}};
}

}  // namespace kldq::model
