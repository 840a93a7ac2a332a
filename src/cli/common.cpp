// Shared subcommand options (--device, --dtype, --threads, --max-gpu-memory) and plan reading.
#include "common.hpp"

#include <fmt/format.h>

#include "kldq/core/context.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::cli {

void add_compute_options(CLI::App& sub, ComputeOptions& opts) {
  sub.add_option("--device", opts.device, "cpu or cuda[:N] (default: cuda when present)");
  sub.add_option("--dtype", opts.dtype, "bf16, fp16 or fp32 (default: bf16 on cuda, fp32 on cpu)");
  sub.add_option("--threads", opts.threads, "CPU threads (default: all)");
  sub.add_option("--max-gpu-memory", opts.max_gpu_memory,
                 "cap on the CUDA allocator, e.g. 22GiB (emulates a smaller card)");
}

RunContext context_from(const ComputeOptions& opts, uint64_t seed) {
  // Parsed first: a malformed size is a usage error whatever the device.
  const uint64_t cap =
      opts.max_gpu_memory.empty() ? 0 : parse_size(opts.max_gpu_memory, "--max-gpu-memory");
  RunContext ctx = make_context(opts.device, opts.dtype, seed, opts.threads);
  if (cap) limit_device_memory(ctx.device, cap, "--max-gpu-memory " + opts.max_gpu_memory);
  return ctx;
}

uint64_t parse_size(const std::string& text, const std::string& what) {
  static const std::pair<const char*, double> kUnits[] = {{"GiB", double(1ULL << 30)},
                                                          {"MiB", double(1ULL << 20)},
                                                          {"GB", 1e9},
                                                          {"MB", 1e6},
                                                          {"", double(1ULL << 30)}};
  for (const auto& [unit, scale] : kUnits) {
    const std::string u = unit;
    if (text.size() <= u.size() || text.compare(text.size() - u.size(), u.size(), u) != 0) continue;
    const std::optional<double> v = parse_number(text.substr(0, text.size() - u.size()));
    // At least one byte, and within uint64_t (the cast of a larger double is undefined).
    if (v && *v * scale >= 1 && *v * scale < 0x1p64) return static_cast<uint64_t>(*v * scale);
    break;
  }
  throw ConfigError(fmt::format(
      "{} {}: expected a positive size such as 22GiB, 512MiB or 24GB (a bare number is GiB)", what,
      text));
}

quant::Plan read_plan_for(const std::string& plan_path, const std::string& model) {
  quant::Plan plan = quant::Plan::from_json(io::read_json_file(plan_path, true), plan_path);
  if (plan.planner.is_object() && plan.planner.contains("model_fingerprint")) {
    const std::string want = plan.planner["model_fingerprint"].get<std::string>();
    if (io::Checkpoint::open(model).fingerprint() != want)
      throw ConfigError(fmt::format(
          "--plan {}: made from a profile of {}, a different model than {} (checkpoint "
          "fingerprints differ); profile {} and plan again",
          plan_path, plan.planner.value("model", std::string("another model")), model, model));
  }
  return plan;
}

}  // namespace kldq::cli
