// Shared subcommand options (--device, --dtype, --threads).
#include "common.hpp"

namespace kldq::cli {

void add_compute_options(CLI::App& sub, ComputeOptions& opts) {
  sub.add_option("--device", opts.device, "cpu or cuda[:N] (default: cuda when present)");
  sub.add_option("--dtype", opts.dtype, "bf16, fp16 or fp32 (default: bf16 on cuda, fp32 on cpu)");
  sub.add_option("--threads", opts.threads, "CPU threads (default: all)");
}

RunContext context_from(const ComputeOptions& opts, uint64_t seed) {
  return make_context(opts.device, opts.dtype, seed, opts.threads);
}

}  // namespace kldq::cli
