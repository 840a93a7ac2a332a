// Forward-throughput benchmark: logits of N windows of T tokens in batches of B, the same work
// as ../shared/bench/hf_baseline.py's eval_forward line. Prints one JSON line per measurement:
// the dense model, then (with --base) the same model quantized in memory to each format, so the
// ratio of quantized to dense forward time comes from one run on one GPU.
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "kldq/core/context.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/quant/quantizer.hpp"

int main(int argc, char** argv) {
  CLI::App app{"kldq forward-throughput benchmark"};
  std::string model, device, dtype;
  int64_t seqs = 64, seq_len = 512, batch = 8, warmup = 2;
  std::vector<std::string> bases;
  app.add_option("--model", model, "checkpoint directory")->required();
  app.add_option("--seqs", seqs, "windows timed (default 64)")->check(CLI::PositiveNumber);
  app.add_option("--seq-len", seq_len, "tokens per window (default 512)")
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "windows per forward (default 8)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed forwards first (default 2)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--device", device, "cpu or cuda");
  app.add_option("--dtype", dtype, "bf16, fp16 or fp32");
  app.add_option("--base", bases, "also time the model quantized (RTN) to these formats");
  CLI11_PARSE(app, argc, argv);
  kldq::log::init(kldq::log::Level::NORMAL);
  try {
    const auto ctx = kldq::make_context(device, dtype, 0, 0);
    std::vector<std::string> runs = {""};
    runs.insert(runs.end(), bases.begin(), bases.end());
    for (const auto& base : runs) {
      const auto t_load = std::chrono::steady_clock::now();
      auto dec = kldq::model::Decoder::load(model, ctx.device, ctx.dtype);
      if (!base.empty()) {
        kldq::quant::Plan plan;
        plan.base = kldq::formats::FormatSpec::parse(base, "--base");
        kldq::quant::apply_layers(
            dec, kldq::quant::quantize_layers(dec, plan.resolve(dec.linear_ids()), {}));
      }
      kldq::device_synchronize(ctx.device);
      const double load_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
      at::manual_seed(0);
      const int64_t vocab = std::min<int64_t>(dec.config().vocab_size, 151000);
      const at::Tensor ids = at::randint(vocab, {seqs, seq_len},
                                         at::TensorOptions().dtype(at::kLong).device(ctx.device));
      at::InferenceMode guard;
      for (int64_t i = 0; i < warmup; ++i) dec.forward(ids.narrow(0, 0, batch));
      kldq::device_synchronize(ctx.device);
      kldq::reset_peak_allocated_bytes(ctx.device);
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < seqs; i += batch)
        dec.forward(ids.narrow(0, i, std::min(batch, seqs - i)));
      kldq::device_synchronize(ctx.device);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int64_t tokens = seqs * seq_len;
      nlohmann::json j = {
          {"what", "kldq_eval_forward"},
          {"device", kldq::device_description(ctx.device)},
          {"dtype", kldq::dtype_name(ctx.dtype)},
          {"format", base.empty() ? "dense" : base},
          {"batch", batch},
          {"seq_len", seq_len},
          {"tokens", tokens},
          {"s", s},
          {"tok_per_s", tokens / s},
          {"load_s", load_s},
          {"weight_gib", dec.weight_bytes() / double(1ull << 30)},
          {"peak_mem_gib", kldq::peak_allocated_bytes(ctx.device) / double(1ull << 30)}};
      std::cout << j.dump() << std::endl;
    }
    return 0;
  } catch (const kldq::Error& e) {
    std::cerr << e.what() << "\n";
    return e.exit_code();
  } catch (const c10::Error& e) {
    std::cerr << "libtorch: " << e.what_without_backtrace() << "\n";
    return kldq::kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return kldq::kExitRuntime;
  }
}
