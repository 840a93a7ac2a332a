// Dequantization-throughput benchmark: GB/s of bf16 written by the dequantization kernels, beside
// the device-to-device copy bandwidth (bytes read + written by a bf16 tensor copy) measured in the
// same run on the same GPU. Prints one JSON line per format and shape. Then the fused
// dequantize + product of decode steps (1, 4, 8 and 16 bf16 rows, on the tensor cores): GB/s of
// packed weight bytes read, against the same copy bandwidth, beside dequantize-then-GEMM and the
// bf16 GEMM of the same product.
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "kldq/core/device.hpp"
#include "kldq/formats/packed.hpp"
#include "kldq/kernels/dequant.hpp"

namespace {

// Seconds per call of f, averaged over `iters` after `iters / 10 + 1` warm-up calls.
template <class F>
double time_per_call(c10::Device dev, int iters, F&& f) {
  for (int i = 0; i < iters / 10 + 1; ++i) f();
  kldq::device_synchronize(dev);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) f();
  kldq::device_synchronize(dev);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kldq dequantization benchmark"};
  std::vector<std::string> formats = {"nf4", "int4_g128", "int4_g128_asym", "int8", "fp8_e4m3"};
  int iters = 200;
  app.add_option("--formats", formats, "formats to time");
  app.add_option("--iters", iters, "timed calls per measurement");
  CLI11_PARSE(app, argc, argv);
  const c10::Device dev(c10::kCUDA);
  // Qwen2.5-1.5B's MLP weight, and a 7B-sized one (bandwidth-bound: 117 MB of bf16).
  for (const auto& [out, in] :
       std::vector<std::pair<int64_t, int64_t>>{{8960, 1536}, {18944, 3584}}) {
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(dev);
    const at::Tensor src = at::randn({out, in}, bf16), dst = at::empty({out, in}, bf16);
    const double bytes = 2.0 * out * in;
    const double copy_s = time_per_call(dev, iters, [&] { dst.copy_(src); });
    const double copy_gbs = 2 * bytes / copy_s / 1e9;  // read + write
    for (const auto& name : formats) {
      const auto spec = kldq::formats::FormatSpec::parse(name);
      const auto p = kldq::formats::quantize_rtn(src.cpu(), spec).to(dev);
      const double s = time_per_call(dev, iters, [&] { kldq::kernels::dequantize_into(p, dst); });
      const double gbs = bytes / s / 1e9;
      nlohmann::json j = {{"what", "dequant"},
                          {"device", kldq::device_description(dev)},
                          {"format", spec.name()},
                          {"shape", {out, in}},
                          {"us", s * 1e6},
                          {"bf16_written_gb_s", gbs},
                          {"read_plus_written_gb_s", (bytes + p.bytes()) / s / 1e9},
                          {"copy_read_plus_written_gb_s", copy_gbs},
                          {"ratio_to_copy", gbs / copy_gbs}};
      std::cout << j.dump() << std::endl;
      for (int64_t m : {1, 4, 8, 16}) {
        const at::Tensor x = at::randn({m, in}, bf16);
        const double fused = time_per_call(dev, iters, [&] { kldq::kernels::gemv(p, x, {}); });
        const double two = time_per_call(dev, iters, [&] {
          kldq::kernels::dequantize_into(p, dst);
          at::linear(x, dst);
        });
        const double dense = time_per_call(dev, iters, [&] { at::linear(x, src); });
        const double wgbs = p.bytes() / fused / 1e9;
        std::cout << nlohmann::json{{"what", "gemv"},
                                    {"format", spec.name()},
                                    {"shape", {out, in}},
                                    {"rows", m},
                                    {"us_fused", fused * 1e6},
                                    {"us_dequant_gemm", two * 1e6},
                                    {"us_bf16_gemm", dense * 1e6},
                                    {"weight_gb_s", wgbs},
                                    {"ratio_to_copy", wgbs / copy_gbs},
                                    {"bf16_ratio_to_copy", bytes / dense / 1e9 / copy_gbs}}
                         .dump()
                  << std::endl;
      }
    }
  }
  return 0;
}
