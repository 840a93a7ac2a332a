// The experiment runner (experiment/runner.hpp): every stage of an experiment, in order, each
// through the same library task as its command (eval::evaluate, profile::profile_checkpoint,
// plan::make_plan, exporting::export_checkpoint), its artifact in the output directory under its
// key; a stage whose artifact exists is reused, a sweep point already in runs.jsonl is skipped, so
// a run killed at any moment continues where it stopped (docs/EXPERIMENTS.md, "Running").
#include <fmt/format.h>

#include <cerrno>
#include <iostream>
#include <map>
#include <sstream>

#include "kldq/build_config.hpp"
#include "kldq/calib/calibration.hpp"
#include "kldq/core/clock.hpp"
#include "kldq/core/context.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/hash.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/core/progress.hpp"
#include "kldq/eval/evaluate.hpp"
#include "kldq/eval/metrics.hpp"
#include "kldq/eval/speed.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/experiment/results.hpp"
#include "kldq/experiment/runner.hpp"

#include "kldq/export/task.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/document.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/config.hpp"
#include "kldq/plan/planner.hpp"
#include "kldq/profile/task.hpp"
#include "kldq/quant/plan.hpp"
#include "run_inputs.hpp"

namespace kldq::experiment {
namespace {

namespace fs = std::filesystem;

class Runner {
 public:
  Runner(const Experiment& e, const RunOptions& o, fs::path out, nlohmann::json compute)
      : e_(e), o_(o), out_(std::move(out)), compute_(std::move(compute)) {}

  // Runs `stages` of one model; returns the records of its finished points.
  void run_model(const std::string& model, const std::string& id, const std::vector<Stage>& stages,
                 std::vector<nlohmann::json>& runs, Progress& bar, size_t& step, size_t total) {
    std::string reference;  // the reference stage's directory, when there is one
    std::map<std::string, std::string> done_points;  // eval key -> already in runs
    for (const auto& r : runs) done_points[r.value("eval_key", "")] = "";
    std::map<std::string, fs::path> by_key;  // stage key -> artifact path
    for (size_t i = 0; i < stages.size(); ++i) {
      const Stage& s = stages[i];
      const fs::path dir = out_ / stage_dir(s), file = dir / stage_artifact(s);
      by_key[s.key] = file;
      if (s.kind == "reference") reference = dir.string();
      ++step;
      const std::string what = stage_label(s, e_);
      // A finished point: its plan and eval stages are skipped with it (its exports are their
      // own artifacts).
      const bool recorded =
          s.point && s.kind != "export" && done_points.count(eval_key_of(stages, i));
      std::error_code ec;
      if (recorded || fs::is_regular_file(file, ec)) {
        log::info("[{}/{}] {} {}: {}", step, total, s.kind, what,
                  recorded ? "finished before" : "reused");
        bar.advance();
        // An evaluation finished but not recorded (killed between the two, or recorded by an
        // earlier configuration): its record is made from the artifact.
        if (s.kind == "eval" && !recorded) add_record(model, id, stages, i, by_key, runs);
        continue;
      }
      fs::create_directories(dir, ec);
      if (ec) throw IoError(fmt::format("{}: cannot create ({})", dir.string(), ec.message()));
      log::info("[{}/{}] {} {} ...", step, total, s.kind, what);
      const auto t0 = Clock::now();
      // What the stage's command would print (its result line, the profile's table of top
      // units), which `kldq run` replaces with its own progress lines and final table.
      const std::string printed = execute(s, model, file, reference, by_key);
      log::debug("{}", printed);
      const double secs = seconds_since(t0);
      log::info("[{}/{}] {} {}: {:.1f} s", step, total, s.kind, what, secs);
      bar.advance();
      if (s.kind == "eval") add_record(model, id, stages, i, by_key, runs);
    }
  }

 private:
  void add_record(const std::string& model, const std::string& id, const std::vector<Stage>& stages,
                  size_t i, const std::map<std::string, fs::path>& by_key,
                  std::vector<nlohmann::json>& runs) {
    runs.push_back(record(model, id, stages, i, by_key));
    write_runs(out_ / runs_file_name(o_.shard), runs);
    // Another shard's damaged file must not stop this run; the report names it.
    try {
      io::write_file_atomic(out_ / "summary.csv", summary_csv(read_all_runs(out_)));
    } catch (const IoError& e) {
      log::warn("summary.csv not updated: {}", e.what());
    }
  }

  void set_calibration(quant::MethodRequest& m) const {
    // The experiment's windows, also over what a plan's method_settings record.
    m.calib = e_.calib, m.samples = e_.samples, m.seq_len = e_.seq_len, m.seed = e_.calib_seed;
  }

  // The eval stage that follows the plan stage `i` (or is `i`).
  static std::string eval_key_of(const std::vector<Stage>& stages, size_t i) {
    return stages[i].kind == "eval" ? stages[i].key : stages.at(i + 1).key;
  }

  std::string execute(const Stage& s, const std::string& model, const fs::path& file,
                      const std::string& reference, const std::map<std::string, fs::path>& by_key) {
    if (s.kind == "profile") {
      profile::ProfileRequest p;
      p.model = model, p.base = s.inputs["base"],
      p.method.method = s.inputs["method"].get<std::string>();
      p.mode = profile::kModes.parse(s.inputs["mode"].get<std::string>(), "profile stage mode");
      p.granularity = profile::kGranularities.parse(s.inputs["granularity"].get<std::string>(),
                                                    "profile stage granularity");
      set_calibration(p.method);
      p.proxies = e_.proxies, p.compute = o_.compute, p.gpus = o_.gpus;
      if (!p.gpus.empty()) p.compute.device.clear();  // --gpus names the devices
      p.out = file.string(), p.csv = (file.parent_path() / "profile.csv").string();
      const profile::ProfileReport r = profile::profile_checkpoint(p);
      return r.table + r.summary;
    }
    if (s.kind == "plan") return plan_point(e_.points[*s.point], s, file, by_key);
    if (s.kind == "export") return export_point(s, model, file, by_key);
    return eval_stage(s, model, file, reference, by_key);
  }

  // The reference's or a point's evaluation, as `kldq eval` makes it.
  std::string eval_stage(const Stage& s, const std::string& model, const fs::path& file,
                         const std::string& reference,
                         const std::map<std::string, fs::path>& by_key) const {
    eval::EvalRequest v;
    v.model = model;
    if (s.kind == "eval") v.plan = by_key.at(s.inputs["plan"]).string();
    v.ppl = e_.ppl, v.ppl_protocol = e_.eval.ppl_protocol, v.ctx = e_.eval.ctx;
    v.kld = s.kind == "eval" && e_.eval.kld && !e_.ppl.empty();
    v.mmlu = e_.mmlu, v.mmlu_protocol = e_.eval.mmlu_protocol;
    v.shots = e_.eval.mmlu_protocol == eval::MmluProtocol::CHAT0SHOT ? -1 : int(e_.eval.shots);
    v.mmlu_limit = e_.eval.mmlu_limit, v.batch = e_.eval.batch, v.compute = o_.compute;
    v.speed = e_.eval.speed;
    if (s.inputs.contains("calibration")) set_calibration(v.method);
    // Flips against the reference stage's saved predictions: the bf16 model's MMLU runs once.
    if (s.kind == "eval" && !e_.mmlu.empty())
      v.reference_predictions = (fs::path(reference) / "metrics.predictions.jsonl").string();
    if (!e_.eval.tasks.empty()) {
      v.tasks = fmt::format("{}", fmt::join(e_.eval.tasks, ","));
      v.tasks_dir = e_.tasks_dir, v.tasks_limit = e_.eval.tasks_limit;
      if (s.kind == "eval")  // likewise the reference's task predictions
        v.reference_task_predictions = (fs::path(reference) / "metrics.tasks.jsonl").string();
    }
    v.out = file.string();
    return eval::evaluate(v).summary;
  }

  // The point's plan: uniform, or from its profiles as `kldq plan` makes it.
  std::string plan_point(const Point& pt, const Stage& s, const fs::path& file,
                         const std::map<std::string, fs::path>& by_key) const {
    if (pt.planner == plan::Strategy::UNIFORM) {
      quant::Plan uniform;
      uniform.method = pt.method;
      uniform.base = formats::FormatSpec::parse(pt.base, "sweep.base");
      uniform.planner.emplace().strategy = plan::kStrategies.name(pt.planner);
      uniform.planner->experiment = e_.name;
      io::write_file_atomic(file, uniform.to_json().dump(2) + "\n");
      return "";
    }
    std::vector<std::string> paths;
    for (const auto& k : s.inputs["profiles"]) paths.push_back(by_key.at(k).string());
    const std::vector<plan::Profile> profiles = plan::read_profiles(paths);
    plan::Request r;
    r.strategy = pt.planner;
    if (pt.percent) r.percent = *pt.percent;
    if (pt.by) r.by = *pt.by;
    if (pt.budget_bpw) r.budget_bpw = *pt.budget_bpw;
    if (pt.seed) r.seed = *pt.seed;
    r.fused_groups = e_.fused_groups;
    const quant::Plan made = plan::make_plan(profiles, r);
    io::write_file_atomic(file, made.to_json().dump(2) + "\n");
    return plan::plan_line(made, profiles, file.string());
  }

  // kldq export of the point's plan; export.json (the artifact, written last) says where.
  std::string export_point(const Stage& s, const std::string& model, const fs::path& file,
                           const std::map<std::string, fs::path>& by_key) {
    const std::string to = s.inputs["to"];
    exporting::ExportRequest x;
    x.to = to;
    x.source.model = model;
    x.source.plan = by_key.at(s.inputs["plan"]).string();
    x.source.compute = o_.compute;
    if (s.inputs.contains("calibration")) set_calibration(x.source.method);
    const std::string name = to == "gguf" ? "model.gguf" : "checkpoint";
    x.source.out = (file.parent_path() / name).string();
    x.source.force = true;  // a copy left by a run killed before export.json was written
    const std::string printed = exporting::export_checkpoint(x);
    const nlohmann::json j = {{"to", to},
                              {"path", name},
                              {"point", *s.point},
                              {"label", point_label(e_.points[*s.point])},
                              {"plan", fs::relative(by_key.at(s.inputs["plan"]), out_).string()}};
    io::write_file_atomic(file, j.dump(2) + "\n");
    return printed;
  }

  nlohmann::json record(const std::string& model, const std::string& id,
                        const std::vector<Stage>& stages, size_t i,
                        const std::map<std::string, fs::path>& by_key) const {
    const Stage& ev = stages[i];
    const Stage& pl = stages[i - 1];
    const Point& pt = e_.points[*ev.point];
    nlohmann::json r = {{"point", *ev.point},
                        {"model", model},
                        {"model_name", fs::path(model).filename().string()},
                        {"model_id", id},
                        {"label", point_label(pt)},
                        {"plan_key", pl.key},
                        {"eval_key", ev.key}};
    for (const char* k : {"base", "method", "granularity", "mode", "planner", "percent", "by",
                          "budget_bpw", "seed"})
      r[k] = nlohmann::json();
    r.update(pt.to_json());
    auto rel = [&](const std::string& key) { return fs::relative(by_key.at(key), out_).string(); };
    r["plan_file"] = rel(pl.key), r["eval_file"] = rel(ev.key);
    r["profile_files"] = nlohmann::json::array();
    for (const auto& k : pl.inputs["profiles"]) r["profile_files"].push_back(rel(k));
    const fs::path metrics = by_key.at(ev.key);
    const nlohmann::json m = io::read_json_file(metrics);
    r.update(
        record_metrics(eval::metrics_from_json(io::Doc(m, metrics.string(), io::DocKind::DATA))));
    return r;
  }

  const Experiment& e_;
  const RunOptions& o_;
  fs::path out_;
  nlohmann::json compute_;
};

// One model's stages: every point's (for the manifest) and those of `points` (to run).
struct ModelStages {
  std::string id;  // the checkpoint's fingerprint
  std::vector<Stage> all, run;
};

// The manifest names the configuration the directory holds now (the report keeps the records of
// its points only); stages are shared by key across configurations.
nlohmann::json manifest_of(const Experiment& e, const nlohmann::json& compute,
                           const std::vector<ModelStages>& models) {
  nlohmann::json manifest = {{"name", e.name},
                             {"kldq_version", KLDQ_VERSION_STRING},
                             {"config", e.path},
                             {"config_sha256", sha256_hex(e.resolved().dump())},
                             {"compute", compute},
                             {"points", e.points.size()},
                             {"models", nlohmann::json::array()}};
  for (size_t m = 0; m < e.models.size(); ++m) {
    nlohmann::json entry = {{"path", e.models[m]},
                            {"name", fs::path(e.models[m]).filename().string()},
                            {"id", models[m].id},
                            {"reference", nullptr},
                            {"stages", nlohmann::json::array()}};
    for (const auto& s : models[m].all) {
      if (s.kind == "reference") entry["reference"] = stage_dir(s) + "/metrics.json";
      entry["stages"].push_back({{"kind", s.kind}, {"key", s.key}, {"dir", stage_dir(s)}});
      if (s.point) entry["stages"].back()["point"] = *s.point;
    }
    manifest["models"].push_back(entry);
  }
  return manifest;
}

// The records of runs_path whose points this configuration still has (renumbered to them); the
// others are set aside (their stages stay in stages/ and are reused if a configuration asks for
// them again). Rewrites runs_path with the kept records.
std::vector<nlohmann::json> current_runs(const fs::path& runs_path,
                                         const std::vector<ModelStages>& models) {
  std::map<std::string, size_t> current;  // eval key -> its point in this configuration
  for (const auto& m : models)
    for (const auto& s : m.run)
      if (s.kind == "eval") current[s.key] = *s.point;
  std::vector<nlohmann::json> runs;
  const std::vector<nlohmann::json> recorded = read_runs(runs_path);
  for (auto r : recorded)
    if (auto it = current.find(r.value("eval_key", "")); it != current.end())
      r["point"] = it->second, runs.push_back(std::move(r));
  if (const size_t old = recorded.size() - runs.size(); old > 0)
    log::warn("{}: {} record(s) of points not in this configuration left out", runs_path.string(),
              old);
  write_runs(runs_path, runs);
  return runs;
}

}  // namespace

std::string run_experiment(const Experiment& e, const RunOptions& given,
                           const std::vector<size_t>& points) {
  RunOptions o = given;
  check_inputs(e, points);
  // --gpus: profiles on those GPUs; the other stages on the first (checked here, before any work).
  const std::vector<RunContext> contexts = model::contexts_from(o.compute, o.gpus);
  if (!o.gpus.empty()) o.compute.device = contexts[0].device.str();
  const nlohmann::json compute = model::compute_tag(contexts[0]);
  const fs::path out = output_path(e.output, "output");
  // The runner writes into its directory (never replaces it); a model is never beneath it.
  check_not_input(out, "output", {e.models.begin(), e.models.end()});
  std::error_code ec;
  fs::create_directories(out / "stages", ec);
  if (ec) throw IoError(fmt::format("{}: cannot create ({})", out.string(), ec.message()));

  std::vector<size_t> all(e.points.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<ModelStages> models;
  size_t total = 0;
  for (const auto& m : e.models) {
    const std::string id = io::Checkpoint::open(m).fingerprint();
    models.push_back(
        {id, plan_stages(e, m, id, all, compute), plan_stages(e, m, id, points, compute)});
    total += models.back().run.size();
  }
  // Checkpoint directories of a killed run (marked and unlocked; never by name alone). Not for
  // shards: they may run on hosts whose locks this one cannot see.
  if (o.shard.whole()) remove_stale_temporaries(out, /*recursive=*/true);
  io::write_file_atomic(out / "config.resolved.yaml", e.resolved_yaml());
  io::write_file_atomic(out / "manifest.json", manifest_of(e, compute, models).dump(2) + "\n");
  std::vector<nlohmann::json> runs = current_runs(out / runs_file_name(o.shard), models);
  log::info("experiment {}: {} sweep points{}, {} stages, results in {}", e.name, points.size(),
            o.shard.whole() ? "" : " (shard " + o.shard.name() + ")", total, out.string());
  Runner runner(e, o, out, compute);
  Progress bar("experiment " + e.name, int64_t(total), "stages");
  size_t step = 0;
  for (size_t m = 0; m < e.models.size(); ++m)
    runner.run_model(e.models[m], models[m].id, models[m].run, runs, bar, step, total);
  bar.finish();
  const auto merged = read_all_runs(out);
  io::write_file_atomic(out / "summary.csv", summary_csv(merged));
  return summary_markdown(merged) +
         fmt::format("{} runs in {} (summary.csv; kldq report {} for plots)\n", merged.size(),
                     out.string(), out.string());
}

}  // namespace kldq::experiment
