// The stages of an experiment run and their artifact keys; sweep shards.
#include <fmt/format.h>

#include <filesystem>
#include <map>

#include "kldq/build_config.hpp"
#include "kldq/core/context.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/hash.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/experiment/config.hpp"
#include "kldq/plan/planner.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::experiment {
namespace {

// A data file's identity: its SHA-256 when it exists (so an edited file is new work), else its
// path, marked missing (a dry run of a config whose files are elsewhere).
std::string identity(const std::string& path) {
  if (path.empty()) return "";
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec) || std::filesystem::is_directory(path, ec)
             ? sha256_path(path)
             : "missing:" + path;
}

Stage make(const std::string& kind, const std::string& model, nlohmann::json inputs,
           const nlohmann::json& compute, std::optional<size_t> point = std::nullopt) {
  const nlohmann::json id = {
      {"stage", kind}, {"inputs", inputs}, {"compute", compute}, {"kldq", KLDQ_VERSION_STRING}};
  return {kind, model, sha256_hex(id.dump()).substr(0, 16), std::move(inputs), point};
}

// The profile stages the selected points need, each once, appended to `out` in the order the
// points first need them; returns each point's profile keys.
std::vector<std::vector<std::string>> profile_stages(const Experiment& e, const std::string& model,
                                                     const std::string& model_id,
                                                     const std::vector<size_t>& selected,
                                                     const nlohmann::json& calibration,
                                                     const nlohmann::json& compute,
                                                     std::vector<Stage>& out) {
  std::map<std::string, std::string> profile_key;  // profile inputs (dumped) -> stage key
  std::vector<std::vector<std::string>> point_profiles(e.points.size());
  for (size_t i : selected) {
    const Point& p = e.points.at(i);
    if (p.planner == plan::Strategy::UNIFORM) continue;
    std::vector<std::string> bases{p.base};
    if (p.planner == plan::Strategy::BUDGET)
      for (const auto& name : e.candidates) {
        const std::string c = quant::method_format(p.method, name);  // hqq: the _fz variant
        if (c != p.base && c != "bf16") bases.push_back(c);
      }
    for (const auto& base : bases) {
      const nlohmann::json in = {
          {"model", model_id},
          {"calibration", calibration},
          {"base", base},
          {"method", p.method},
          {"granularity", profile::kGranularities.name(p.granularity.value())},
          {"mode", profile::kModes.name(p.mode.value())},
          {"proxies", e.proxies}};
      auto [it, fresh] = profile_key.emplace(in.dump(), "");
      if (fresh) {
        out.push_back(make("profile", model, in, compute));
        it->second = out.back().key;
      }
      point_profiles[i].push_back(it->second);
    }
  }
  return point_profiles;
}

}  // namespace

std::vector<Stage> plan_stages(const Experiment& e, const std::string& model,
                               const std::string& model_id, const std::vector<size_t>& selected,
                               const nlohmann::json& compute) {
  // MMLU's scoring ("shared-prefix": each subject's prefix cached, since 0.1.0's KV cache) keys
  // the evaluations, so results of the earlier full-prompt scoring are not mixed in.
  nlohmann::json data = {{"ppl", identity(e.ppl)},
                         {"mmlu", identity(e.mmlu)},
                         {"mmlu_scoring", "shared-prefix"},
                         {"eval", e.resolved()["eval"]}};
  // The selected tasks' files only: another file in the directory is no new work.
  for (const std::string& t : e.eval.tasks)
    for (const auto& f : eval::task_files(t, e.tasks_dir))
      data["tasks"][t].push_back(identity(f.string()));
  const nlohmann::json calibration = {{"file", identity(e.calib)},
                                      {"samples", e.samples},
                                      {"seq_len", e.seq_len},
                                      {"seed", e.calib_seed}};
  std::vector<Stage> out;
  if (!e.ppl.empty() || !e.mmlu.empty() || !e.tasks_dir.empty())
    out.push_back(make("reference", model, {{"model", model_id}, {"data", data}}, compute));

  // Profiles, each once, in the order the points first need them; a point's plan depends on
  // the keys of its profiles.
  const std::vector<std::vector<std::string>> point_profiles =
      profile_stages(e, model, model_id, selected, calibration, compute, out);
  for (size_t i : selected) {
    const nlohmann::json in = {
        {"model", model_id}, {"point", e.points[i].to_json()}, {"profiles", point_profiles[i]}};
    nlohmann::json plan_in = in;
    if (e.fused_groups) plan_in["fused_groups"] = true;  // only when on: other keys stay
    out.push_back(make("plan", model, plan_in, compute, i));
    const std::string plan_key = out.back().key;
    nlohmann::json ev = {{"plan", plan_key}, {"data", data}};
    // gptq and awq fit the plan's layers on the calibration windows when the model is evaluated.
    if (quant::needs_calibration(e.points[i].method)) ev["calibration"] = calibration;
    out.push_back(make("eval", model, ev, compute, i));
    for (const std::string& to : e.export_to) {
      nlohmann::json x = {{"plan", plan_key}, {"to", to}};
      if (ev.contains("calibration")) x["calibration"] = calibration;
      out.push_back(make("export", model, x, compute, i));
    }
  }
  return out;
}

std::string stage_dir(const Stage& s) {
  return "stages/" + s.kind + "-" + s.key;
}

std::string stage_artifact(const Stage& s) {
  return s.kind == "profile"  ? "profile.json"
         : s.kind == "plan"   ? "plan.json"
         : s.kind == "export" ? "export.json"
                              : "metrics.json";
}

std::vector<size_t> shard_points(const Experiment& e, const Shard& shard) {
  std::vector<size_t> out;
  for (size_t p = 0; p < e.points.size(); ++p)
    if (shard.owns(p)) out.push_back(p);
  return out;
}

}  // namespace kldq::experiment
