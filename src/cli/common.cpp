// Shared subcommand options (--device, --dtype, --threads, --max-gpu-memory; the method and its
// calibration) and plan reading.
#include "common.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <sstream>

#include <iostream>

#include "commands.hpp"
#include "kldq/core/context.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layout.hpp"

namespace kldq::cli {

int print(const Printed& p) {
  std::cerr << p.err;
  std::cout << p.out;
  return 0;
}

void add_compute_options(CLI::App& sub, ComputeOptions& opts) {
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

model::MemoryPlan plan_residency(const RunContext& ctx, const ComputeOptions& opts,
                                 const model::MemoryNeeds& needs, const std::string& lower) {
  uint64_t budget = model::kNoBudget;  // the CPU: host memory is the limit, not planned here
  if (ctx.device.is_cuda())
    budget = opts.max_gpu_memory.empty() ? device_free_bytes(ctx.device) / 20 * 19
                                         : parse_size(opts.max_gpu_memory, "--max-gpu-memory");
  const model::MemoryPlan plan = model::plan_memory(needs, budget, opts.resident_blocks, lower);
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

void require_checkpoint_dir(const std::string& dir) {
  if (!std::filesystem::is_directory(dir))
    throw ConfigError(fmt::format("{}: no such checkpoint directory", dir));
}

std::vector<ShardFile> read_shard_files(const std::vector<std::string>& paths) {
  std::vector<ShardFile> shards;
  for (const std::string& path : paths) shards.push_back({path, io::read_json_file(path, true)});
  return shards;
}

nlohmann::json compute_tag(const RunContext& ctx) {
  return {{"device", ctx.device.is_cuda() ? "cuda" : "cpu"}, {"dtype", dtype_name(ctx.dtype)}};
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

void add_method_options(CLI::App& sub, MethodCliOptions& o, bool with_calibration, bool with_seed) {
  sub.add_option("--method", o.method, "rtn (default), hqq (int _fz formats), gptq or awq");
  sub.add_option("--group", o.group, "group (int) or block (nf4, fp4) size of --base")
      ->check(CLI::PositiveNumber);
  // Each setting is stored only when given, so a plan's recorded one can be the default.
  sub.add_option_function<double>(
         "--damp", [&o](const double& v) { o.damp = v; },
         "gptq: dampening, a fraction of the Hessian's mean diagonal (default 0.01)")
      ->check(CLI::Range(0.0, 1e4));
  sub.add_flag_function(
         "--act-order,!--no-act-order", [&o](int64_t count) { o.act_order = count > 0; },
         "gptq: columns by decreasing activation energy, static groups (default on)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // the last one given wins
  if (!with_calibration) return;
  sub.add_option("--calib", o.calib, "gptq/awq: calibration text or JSONL file");
  sub.add_option_function<int64_t>(
         "--samples", [&o](const int64_t& v) { o.samples = v; },
         "calibration windows N (default 128)")
      ->check(CLI::PositiveNumber);
  sub.add_option_function<int64_t>(
         "--seq-len", [&o](const int64_t& v) { o.seq_len = v; },
         "tokens per calibration window T (default 512)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  if (with_seed)
    sub.add_option_function<uint64_t>(
        "--seed", [&o](const uint64_t& v) { o.seed = v; },
        "calibration window selection seed (default 0)");
}

namespace {

// A plan's recorded settings when they are of `method` (a --method that overrides the plan's
// makes them not apply). Plan::from_json checked them already.
std::optional<quant::RecordedMethod> recorded_for(const quant::Plan* plan,
                                                  const std::string& method) {
  if (!plan || plan->method_settings.is_null()) return std::nullopt;
  quant::RecordedMethod r =
      quant::method_from_json(plan->method_settings, plan->source + ".method_settings");
  if (r.options.method != method) return std::nullopt;
  return r;
}

}  // namespace

quant::MethodOptions method_options(const MethodCliOptions& o, const std::string& method,
                                    const quant::Plan* plan) {
  quant::MethodOptions m;
  m.method = !method.empty() ? method : o.method.empty() ? "rtn" : o.method;
  quant::check_method(m.method, "--method");
  if (o.gptq_given() && m.method != "gptq")
    throw ConfigError(fmt::format(
        "--damp, --act-order, --no-act-order: settings of gptq, but the method is {}", m.method));
  if (const auto r = recorded_for(plan, m.method)) {
    m.gptq = r->options.gptq;
    m.awq = r->options.awq;
    m.hqq = r->options.hqq;
  }
  if (o.damp) m.gptq.damp = *o.damp;
  if (o.act_order) m.gptq.act_order = *o.act_order;
  return m;
}

formats::FormatSpec base_format(const std::string& base, int group, const std::string& what) {
  formats::FormatSpec spec = formats::FormatSpec::parse(base, what);
  if (group == 0) return spec;
  const formats::Blocking b = spec.traits().blocking;
  if (b != formats::Blocking::GROUP && b != formats::Blocking::FLAT_BLOCK)
    throw ConfigError(fmt::format("--group {}: format {} has no groups", group, spec.name()));
  for (size_t i = base.find('_'); i != std::string::npos; i = base.find('_', i + 1))
    if (i + 2 < base.size() && (base[i + 1] == 'g' || base[i + 1] == 'b') &&
        std::isdigit(static_cast<unsigned char>(base[i + 2])))
      throw ConfigError(fmt::format("--group {}: --base {} already names its group", group, base));
  return formats::FormatSpec::parse(
      fmt::format("{}_{}{}", base, b == formats::Blocking::GROUP ? 'g' : 'b', group), "--group");
}

std::optional<calib::Calibration> method_calibration(const MethodCliOptions& o,
                                                     const std::string& method,
                                                     const std::string& model,
                                                     const quant::Plan* plan) {
  if (!quant::needs_calibration(method)) {
    if (!o.calib.empty() || o.window_given())
      throw ConfigError(fmt::format(
          "--calib, --samples, --seq-len, --seed: {} uses no calibration (gptq and awq do)",
          method));
    return std::nullopt;
  }
  calib::CalibrationSpec spec;
  spec.file = o.calib;
  const auto r = recorded_for(plan, method);
  const auto rc = r ? r->calibration : std::nullopt;
  const std::string recorded_at = plan ? plan->source + ".method_settings.calibration" : "";
  if (rc) {  // the plan's windows, where the command line names none
    spec.samples = rc->samples, spec.seq_len = rc->seq_len, spec.seed = rc->seed;
    if (o.calib.empty()) {
      if (!std::filesystem::is_regular_file(rc->file))
        throw ConfigError(fmt::format("{}.file {}: not found; give the text with --calib",
                                      recorded_at, rc->file));
      spec.file = rc->file;
    }
  }
  spec.samples = o.samples.value_or(spec.samples);
  spec.seq_len = o.seq_len.value_or(spec.seq_len);
  spec.seed = o.seed.value_or(spec.seed);
  if (rc && o.calib.empty())
    log::info("calibration from the plan: {} x {} tokens of {} (seed {})", spec.samples,
              spec.seq_len, rc->file, spec.seed);
  if (spec.file.empty())
    throw ConfigError(fmt::format("--method {}: needs calibration text (--calib FILE)", method));
  const model::ModelConfig config =
      model::load_config(std::filesystem::path(model) / "config.json");
  const auto tokenizer = io::Tokenizer::load(model);
  if (spec.seq_len > config.max_position_embeddings)
    throw ConfigError(fmt::format("{} {} exceeds the model's context of {}",
                                  rc && !o.seq_len ? recorded_at + ".seq_len" : "--seq-len",
                                  spec.seq_len, config.max_position_embeddings));
  calib::Calibration cal = calib::make_calibration(spec, *tokenizer);
  if (rc) {  // other windows than the plan's fit other layers
    std::vector<std::string> differ;
    if (cal.identity["sha256"] != rc->sha256) differ.push_back("text (sha256)");
    if (spec.samples != rc->samples) differ.push_back("samples");
    if (spec.seq_len != rc->seq_len) differ.push_back("seq_len");
    if (spec.seed != rc->seed) differ.push_back("seed");
    if (!differ.empty())
      log::warn(
          "calibration: {} not the plan's ({}: {} x {} tokens of {}, seed {}): the layers are "
          "fitted on other windows than the plan's",
          fmt::join(differ, ", "), recorded_at, rc->samples, rc->seq_len, rc->file, rc->seed);
  }
  if (cal.ids.max().item<int64_t>() >= config.vocab_size)
    throw ConfigError(
        fmt::format("--calib: the tokenizer produced ids outside the model's vocabulary of {}",
                    config.vocab_size));
  return cal;
}

std::optional<quant::Plan> plan_from(const std::string& model, const std::string& base,
                                     const std::string& plan, const MethodCliOptions& method) {
  if (base.empty() && plan.empty()) return std::nullopt;
  if (!base.empty() && !plan.empty()) throw ConfigError("--base and --plan exclude each other");
  if (!plan.empty()) {
    if (method.group) throw ConfigError("--group: applies to --base, not to --plan");
    quant::Plan p = read_plan_for(plan, model);
    if (!method.method.empty()) p.method = method.method;
    return p;
  }
  quant::Plan p;
  p.method = method.method.empty() ? "rtn" : method.method;
  p.base = base_format(base, method.group, "--base");
  return p;
}

void add_plan_bytes(model::MemoryNeeds& needs, const quant::Plan& plan,
                    const model::ModelConfig& c) {
  for (const auto& [name, spec] : plan.resolve(model::linear_ids(c))) {
    const model::LayerId id = *model::LayerId::parse(name);  // names from the resolver
    const auto shape = model::linear_shape(c, id.proj);
    needs.blocks[static_cast<size_t>(id.block)] += spec.bytes(shape[0], shape[1]);
  }
}

void add_quantize_working(model::MemoryNeeds& n, const quant::MethodOptions& method,
                          const std::optional<calib::Calibration>& cal, const model::ModelConfig& c,
                          c10::ScalarType dtype) {
  // HQQ fits one layer at a time in fp32 with about ten copies of it.
  if (method.method == "hqq")
    n.working = std::max<uint64_t>(
        n.working, 10 * 4 * uint64_t(c.intermediate_size) * uint64_t(c.hidden_size));
  // In-memory GPTQ/AWQ comes first and may need more (hidden states, Hessians, inputs).
  if (cal)
    n.working = std::max(
        n.working,
        quant::memory_needs(n, c, {}, method, cal->ids.size(0), cal->ids.size(1), dtype).working);
}

}  // namespace kldq::cli
