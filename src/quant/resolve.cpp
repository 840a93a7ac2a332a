// Method, base format, calibration and plan resolution for quantizing tasks (quant/resolve.hpp).
#include "kldq/quant/resolve.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>

#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layout.hpp"

namespace kldq::quant {

Plan read_plan_for(const std::string& plan_path, const std::string& model) {
  Plan plan = Plan::from_json(io::read_json_file(plan_path, true), plan_path);
  if (plan.planner && plan.planner->model_fingerprint) {
    if (io::Checkpoint::open(model).fingerprint() != *plan.planner->model_fingerprint)
      throw ConfigError(
          fmt::format("--plan {}: made from a profile of {}, a different model than {} (checkpoint "
                      "fingerprints differ); profile {} and plan again",
                      plan_path, plan.planner->model.value_or("another model"), model, model));
  }
  return plan;
}

namespace {

// A plan's recorded settings when they are of `method` (a --method that overrides the plan's
// makes them not apply). Plan::from_json checked them already.
std::optional<RecordedMethod> recorded_for(const Plan* plan, Method method) {
  if (!plan || plan->method_settings.is_null()) return std::nullopt;
  RecordedMethod r = method_from_json(
      io::Doc(plan->method_settings, plan->source, io::DocKind::CONFIG, "method_settings"));
  if (r.options.method != method) return std::nullopt;
  return r;
}

}  // namespace

std::optional<Method> given_method(const MethodRequest& r) {
  if (r.method.empty()) return std::nullopt;
  return parse_method(r.method, "--method");
}

MethodOptions resolve_method(const MethodRequest& o, std::optional<Method> method,
                             const Plan* plan) {
  MethodOptions m;
  m.method = method ? *method : given_method(o).value_or(Method::RTN);
  if (o.gptq_given() && m.method != Method::GPTQ)
    throw ConfigError(
        fmt::format("--damp, --act-order, --no-act-order: settings of gptq, but the method is {}",
                    method_name(m.method)));
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

std::optional<calib::Calibration> resolve_calibration(const MethodRequest& o, Method method,
                                                      const std::string& model, const Plan* plan) {
  if (!needs_calibration(method)) {
    if (!o.calib.empty() || o.window_given())
      throw ConfigError(fmt::format(
          "--calib, --samples, --seq-len, --seed: {} uses no calibration (gptq and awq do)",
          method_name(method)));
    return std::nullopt;
  }
  calib::CalibrationSpec spec;
  spec.file = o.calib;
  const auto r = recorded_for(plan, method);
  const auto rc = r ? r->calibration : std::nullopt;
  const std::string recorded_at = plan ? plan->source + ": method_settings.calibration" : "";
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
    throw ConfigError(
        fmt::format("--method {}: needs calibration text (--calib FILE)", method_name(method)));
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
    if (cal.identity.sha256 != rc->sha256) differ.push_back("text (sha256)");
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

std::optional<Plan> resolve_plan(const std::string& model, const std::string& base,
                                 const std::string& plan, const MethodRequest& method) {
  if (base.empty() && plan.empty()) return std::nullopt;
  if (!base.empty() && !plan.empty()) throw ConfigError("--base and --plan exclude each other");
  if (!plan.empty()) {
    if (method.group) throw ConfigError("--group: applies to --base, not to --plan");
    Plan p = read_plan_for(plan, model);
    if (const auto m = given_method(method)) p.method = *m;
    return p;
  }
  Plan p;
  p.method = given_method(method).value_or(Method::RTN);
  p.base = base_format(base, method.group, "--base");
  return p;
}

void add_plan_bytes(model::MemoryNeeds& needs, const Plan& plan, const model::ModelConfig& c) {
  for (const auto& [name, spec] : plan.resolve(model::linear_ids(c))) {
    const model::LayerId id = *model::LayerId::parse(name);  // names from the resolver
    const auto shape = model::linear_shape(c, id.proj);
    needs.blocks[static_cast<size_t>(id.block)] += spec.bytes(shape[0], shape[1]);
  }
}

void add_quantize_working(model::MemoryNeeds& n, const MethodOptions& method,
                          const std::optional<calib::Calibration>& cal, const model::ModelConfig& c,
                          c10::ScalarType dtype) {
  // HQQ fits one layer at a time in fp32 with about ten copies of it.
  if (method.method == Method::HQQ)
    n.working = std::max<uint64_t>(
        n.working, 10 * 4 * uint64_t(c.intermediate_size) * uint64_t(c.hidden_size));
  // In-memory GPTQ/AWQ comes first and may need more (hidden states, Hessians, inputs).
  if (cal)
    n.working =
        std::max(n.working,
                 memory_needs(n, c, {}, method, cal->ids.size(0), cal->ids.size(1), dtype).working);
}

}  // namespace kldq::quant
