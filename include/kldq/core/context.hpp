// RunContext: the device, dtype, seed and thread count a command computes with, resolved
// once from the command line (README.md, "Commands built so far": cuda when present, bf16 on cuda,
// fp32 on cpu).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kldq {

struct RunContext {
  c10::Device device{c10::kCPU};
  c10::ScalarType dtype{c10::kFloat};
  uint64_t seed{0};
  int threads{0};  // 0: libtorch's default
};

// Parses "bf16" | "fp16" | "fp32" (ConfigError naming `option` otherwise).
c10::ScalarType parse_dtype(std::string_view text, std::string_view option = "--dtype");
// The lowercase name kldq uses for a compute dtype ("bf16", "fp16", "fp32").
std::string dtype_name(c10::ScalarType dtype);
// Parses "cuda" | "cuda:N" | "cpu"; "cuda" without a GPU is a ConfigError.
c10::Device parse_device(std::string_view text, std::string_view option = "--device");
// The whole of `text` as a finite decimal number ("20", "2.5e3"); nullopt otherwise (the
// option parsers then name the option and what they expected).
std::optional<double> parse_number(const std::string& text);
// "22GiB", "512MiB", "24GB", "24" (GiB) -> bytes; ConfigError naming `what` otherwise.
uint64_t parse_size(const std::string& text, const std::string& what);

// Resolves empty device/dtype strings to the defaults and applies the thread count.
RunContext make_context(std::string_view device, std::string_view dtype, uint64_t seed,
                        int threads);

}  // namespace kldq
