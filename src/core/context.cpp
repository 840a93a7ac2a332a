// RunContext parsing and defaults (device, dtype, threads).
#include "kldq/core/context.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <fmt/format.h>

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "kldq/core/error.hpp"
#include "kldq/core/workers.hpp"

namespace kldq {

c10::ScalarType parse_dtype(std::string_view text, std::string_view option) {
  if (text == "bf16" || text == "bfloat16") return c10::kBFloat16;
  if (text == "fp16" || text == "float16") return c10::kHalf;
  if (text == "fp32" || text == "float32") return c10::kFloat;
  throw ConfigError(
      fmt::format("{}: unknown dtype '{}' (expected bf16, fp16 or fp32)", option, text));
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kBFloat16:
      return "bf16";
    case c10::kHalf:
      return "fp16";
    case c10::kFloat:
      return "fp32";
    default:
      return std::string(c10::toString(dtype));
  }
}

std::optional<double> parse_number(const std::string& text) {
  // Decimal only: std::stod would also take leading blanks, hex and "inf"/"nan".
  if (text.empty() || text.find_first_not_of("0123456789.eE+-") != std::string::npos)
    return std::nullopt;
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {  // no number at all, or out of double's range
    return std::nullopt;
  }
  if (used != text.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

c10::Device parse_device(std::string_view text, std::string_view option) {
  c10::Device device{c10::kCPU};
  try {
    device = c10::Device(std::string(text));
  } catch (const std::exception&) {
    throw ConfigError(
        fmt::format("{}: unknown device '{}' (expected cpu or cuda[:N])", option, text));
  }
  if (!device.is_cpu() && !device.is_cuda())
    throw ConfigError(
        fmt::format("{}: unsupported device '{}' (expected cpu or cuda[:N])", option, text));
  if (device.is_cuda() && !at::hasCUDA())
    throw ConfigError(
        fmt::format("{}: '{}' requested but no CUDA device is available", option, text));
  if (device.is_cuda() && device.has_index() &&
      device.index() >= at::detail::getCUDAHooks().deviceCount())
    throw ConfigError(fmt::format("{}: '{}' requested but only {} CUDA device(s) exist", option,
                                  text, at::detail::getCUDAHooks().deviceCount()));
  return device;
}

namespace {

// CPUs this process may run on (its affinity mask, as under taskset or a SLURM allocation).
int available_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return std::max(1, int(std::thread::hardware_concurrency()));
}

}  // namespace

RunContext make_context(std::string_view device, std::string_view dtype, uint64_t seed,
                        int threads) {
  RunContext ctx;
  ctx.device = device.empty()
                   ? (at::hasCUDA() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU))
                   : parse_device(device);
  // bf16 on GPUs (Qwen overflows in fp16); fp32 on CPU, where bf16 matmuls are slow and inexact.
  ctx.dtype =
      dtype.empty() ? (ctx.device.is_cuda() ? c10::kBFloat16 : c10::kFloat) : parse_dtype(dtype);
  ctx.seed = seed;
  const int cpus = available_cpus();
  if (threads < 0 || threads > 4 * cpus)
    throw ConfigError(fmt::format("--threads {}: expected 1 to {} (this process may use {} CPUs)",
                                  threads, 4 * cpus, cpus));
  // 0 keeps libtorch's default (OpenMP's: the CPUs of the affinity mask), not a guess from the
  // machine's load: CPU results may depend on the thread count and a run must not change with
  // the weather. On a busy machine pass fewer (OpenMP threads spin while they wait).
  ctx.threads = threads;
  if (threads > 0) at::set_num_threads(threads);
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

int cpu_workers() {
  return std::max(1, at::get_num_threads());
}

}  // namespace kldq
