// The options every computing subcommand shares, registered on CLI11 (common.hpp).
#include "common.hpp"

#include <fmt/format.h>

#include <iostream>

namespace kldq::cli {

int print(const std::string& out, const std::string& err) {
  std::cerr << err;
  std::cout << out;
  return 0;
}

void add_compute_options(CLI::App& sub, model::ComputeOptions& opts) {
  sub.add_option("--device", opts.device, "cpu or cuda[:N] (default: cuda when present)");
  sub.add_option("--dtype", opts.dtype, "bf16, fp16 or fp32 (default: bf16 on cuda, fp32 on cpu)");
  sub.add_option("--threads", opts.threads, "CPU threads (default: all)");
  sub.add_option("--max-gpu-memory", opts.max_gpu_memory,
                 "GPU memory budget, e.g. 22GiB: weights that do not fit stream from host memory "
                 "(default: the free memory less 5%)");
  sub.add_option("--resident-blocks", opts.resident_blocks,
                 "at most N decoder blocks kept on the device; the rest stream (default: as many "
                 "as the budget allows)")
      ->check(CLI::NonNegativeNumber);
}

void add_method_options(CLI::App& sub, quant::MethodRequest& o, bool with_calibration,
                        bool with_seed) {
  sub.add_option("--method", o.method, quant::method_names() + " (hqq: int _fz formats)")
      ->default_str(quant::method_name(quant::Method::RTN));
  sub.add_option("--group", o.group, "group (int) or block (nf4, fp4) size of --base")
      ->check(CLI::PositiveNumber);
  // Each setting is stored only when given, so a plan's recorded one can be the default.
  sub.add_option_function<double>(
         "--damp", [&o](const double& v) { o.damp = v; },
         "gptq: dampening, a fraction of the Hessian's mean diagonal")
      ->check(CLI::Range(0.0, 1e4))
      ->default_str(fmt::format("{}", quant::GptqOptions{}.damp));
  sub.add_flag_function(
         "--act-order,!--no-act-order", [&o](int64_t count) { o.act_order = count > 0; },
         "gptq: columns by decreasing activation energy, static groups (default on)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // the last one given wins
  if (!with_calibration) return;
  sub.add_option("--calib", o.calib, "gptq/awq: calibration text or JSONL file");
  sub.add_option_function<int64_t>(
         "--samples", [&o](const int64_t& v) { o.samples = v; }, "calibration windows N")
      ->check(CLI::PositiveNumber)
      ->default_str(std::to_string(calib::CalibrationSpec{}.samples));
  sub.add_option_function<int64_t>(
         "--seq-len", [&o](const int64_t& v) { o.seq_len = v; }, "tokens per calibration window T")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->default_str(std::to_string(calib::CalibrationSpec{}.seq_len));
  if (with_seed)
    sub.add_option_function<uint64_t>(
           "--seed", [&o](const uint64_t& v) { o.seed = v; }, "calibration window selection seed")
        ->default_str(std::to_string(calib::CalibrationSpec{}.seed));
}

}  // namespace kldq::cli
