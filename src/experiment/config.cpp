// Experiment files: YAML/JSON reading with key-path errors, defaults, sweep expansion.
#include "kldq/experiment/config.hpp"
#include "kldq/experiment/results.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>
#include <sstream>

#include "kldq/core/context.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/vocabulary.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/eval/perplexity.hpp"
#include "kldq/export/export.hpp"
#include "kldq/formats/format.hpp"
#include "kldq/io/document.hpp"
#include "kldq/plan/planner.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::experiment {
namespace {

// A YAML node with the key path that reached it; errors in the document reader's one format
// (io::doc_message: `file: a.b[2]: expected ..., got ...`). YAML scalars are untyped text, so
// numbers and booleans are parsed here rather than read through io::Doc's JSON types.
struct Node {
  YAML::Node n;
  std::string file, key;

  [[noreturn]] void fail(const std::string& expected) const {
    const std::string got = !n.IsDefined() || n.IsNull() ? "nothing"
                            : n.IsScalar()               ? fmt::format("\"{}\"", n.Scalar())
                            : n.IsSequence()             ? "a list"
                                                         : "a mapping";
    throw ConfigError(
        io::doc_message(file, key, fmt::format("expected {}, got {}", expected, got)));
  }
  // A missing key or index gives an undefined node (yaml-cpp's own lookup of a missing key gives
  // a node that throws on use).
  Node at(const std::string& k) const {
    const YAML::Node& c = n;
    return {has(k) ? c[k] : YAML::Node(YAML::NodeType::Undefined), file,
            key.empty() ? k : key + "." + k};
  }
  Node at(size_t i) const {
    const YAML::Node& c = n;
    return {n.IsSequence() && i < n.size() ? c[i] : YAML::Node(YAML::NodeType::Undefined), file,
            fmt::format("{}[{}]", key, i)};
  }
  bool has(const std::string& k) const {
    const YAML::Node& c = n;
    return n.IsMap() && c[k].IsDefined();
  }

  // Fails on any key of this mapping outside `known`.
  void only(std::initializer_list<const char*> known) const {
    if (!n.IsMap()) fail("a mapping");
    for (const auto& kv : n) {
      const std::string k = kv.first.as<std::string>();
      bool ok = false;
      for (const char* x : known) ok = ok || k == x;
      if (!ok) {
        std::string list;
        for (const char* x : known) list += std::string(list.empty() ? "" : ", ") + x;
        throw ConfigError(io::doc_message(file, key.empty() ? k : key + "." + k,
                                          fmt::format("unknown key (expected one of {})", list)));
      }
    }
  }
  std::string text() const {
    if (!n.IsScalar() || n.Scalar().empty()) fail("a string");
    return n.Scalar();
  }
  double number() const {
    const auto v = n.IsScalar() ? parse_number(n.Scalar()) : std::nullopt;
    if (!v) fail("a number");
    return *v;
  }
  int64_t count(int64_t min) const {
    const auto v = n.IsScalar() ? parse_number(n.Scalar()) : std::nullopt;
    // The range test comes first: casting a double beyond int64_t is undefined.
    if (!v || !(*v >= double(min) && *v < 0x1p62) || *v != double(int64_t(*v)))
      fail(fmt::format("an integer >= {}", min));
    return int64_t(*v);
  }
  bool flag() const {
    if (n.IsScalar() && (n.Scalar() == "true" || n.Scalar() == "false"))
      return n.Scalar() == "true";
    fail("true or false");
  }
  // A scalar or a non-empty list of them: the values of a sweep dimension, with their paths.
  std::vector<Node> values() const {
    if (n.IsScalar()) return {*this};
    if (!n.IsSequence() || n.size() == 0) fail("a value or a non-empty list");
    std::vector<Node> out;
    for (size_t i = 0; i < n.size(); ++i) out.push_back(at(i));
    return out;
  }
};

// The term `v` names in `vocabulary`.
template <class E, size_t N>
E one_of(const Node& v, const Vocabulary<E, N>& vocabulary) {
  const auto value = vocabulary.find(v.text());
  if (!value) v.fail("one of " + vocabulary.names());
  return *value;
}
// Its canonical name (for the fields of Experiment that are names).
template <class E, size_t N>
std::string name_of(const Node& v, const Vocabulary<E, N>& vocabulary) {
  return vocabulary.name(one_of(v, vocabulary));
}

std::string format_name(const Node& v) {
  try {
    return formats::FormatSpec::parse(v.text(), v.file + ": " + v.key).name();
  } catch (const ConfigError&) {
    v.fail("a format name (docs/FORMATS.md)");
  }
}

quant::Method method_of(const Node& v) {
  const auto m = quant::kMethods.find(v.text());
  if (!m) v.fail("one of " + quant::method_names());
  return *m;
}

double percent(const Node& v) {
  try {
    return plan::parse_percent(v.n.IsScalar() ? v.n.Scalar() : "", "");
  } catch (const ConfigError&) {
    v.fail("a percentage from 0 to 100");
  }
}

}  // namespace

nlohmann::json Point::to_json() const {
  nlohmann::json j = {
      {"base", base}, {"method", method}, {"planner", plan::kStrategies.name(planner)}};
  if (granularity) j["granularity"] = profile::kGranularities.name(*granularity);
  if (mode) j["mode"] = profile::kModes.name(*mode);
  if (percent) j["percent"] = *percent;
  if (by) j["by"] = plan::kBys.name(*by);
  if (budget_bpw) j["budget_bpw"] = *budget_bpw;
  if (seed) j["seed"] = *seed;
  return j;
}

nlohmann::json Experiment::resolved() const {
  nlohmann::json pts = nlohmann::json::array();
  for (const Point& p : points) pts.push_back(p.to_json());
  nlohmann::json j = {
      {"name", name},
      {"models", models},
      {"data", {{"calib", calib}, {"ppl", ppl}, {"mmlu", mmlu}}},
      {"calibration", {{"samples", samples}, {"seq_len", seq_len}, {"seed", calib_seed}}},
      {"profile", {{"proxies", proxies}}},
      {"plan", {{"candidates", candidates}}},
      {"eval",
       {{"ppl_protocol", eval::kPplProtocols.name(eval.ppl_protocol)},
        {"ctx", eval.ctx},
        {"kld", eval.kld},
        {"mmlu_protocol", eval::kMmluProtocols.name(eval.mmlu_protocol)},
        {"shots", eval.shots},
        {"mmlu_limit", eval.mmlu_limit},
        {"batch", eval.batch}}},
      {"output", output},
      {"points", pts}};
  // Only when given, so the stage keys of experiments without tasks stay as they were.
  if (!eval.tasks.empty()) {
    j["data"]["tasks"] = tasks_dir;
    j["eval"]["tasks"] = eval.tasks, j["eval"]["tasks_limit"] = eval.tasks_limit;
  }
  // Only when asked for, likewise (speed is measured, not computed: it keys the stages so that
  // turning it on runs the evaluations again).
  if (eval.speed) j["eval"]["speed"] = true;
  if (fused_groups) j["plan"]["fused_groups"] = true;
  if (!export_to.empty()) j["export"] = {{"to", export_to}};
  // Only when given: the budget changes where weights live, not any result.
  if (!max_gpu_memory.empty()) j["max_gpu_memory"] = max_gpu_memory;
  return j;
}

namespace {
Experiment from_yaml(const YAML::Node& root, const std::string& path);
}  // namespace

Experiment load_experiment(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::Load(read_input_file(path, kMaxDocumentBytes, /*config=*/true));
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}:{}:{}: {}", path, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  try {
    return from_yaml(root, path);
  } catch (const YAML::Exception& x) {  // e.g. a key that is itself a list or mapping
    throw ConfigError(fmt::format("{}:{}:{}: {}", path, x.mark.line + 1, x.mark.column + 1, x.msg));
  }
}

namespace {

// JSON (as resolved() makes it: objects, arrays, strings, numbers, booleans) into a YAML emitter.
void emit(YAML::Emitter& out, const nlohmann::json& j) {
  if (j.is_object()) {
    out << YAML::BeginMap;
    for (const auto& [k, v] : j.items()) {
      out << YAML::Key << k << YAML::Value;
      emit(out, v);
    }
    out << YAML::EndMap;
  } else if (j.is_array()) {
    out << YAML::BeginSeq;
    for (const auto& v : j) emit(out, v);
    out << YAML::EndSeq;
  } else if (j.is_string()) {
    out << YAML::DoubleQuoted << j.get<std::string>();
  } else if (j.is_null()) {
    out << YAML::Null;
  } else {
    out << j.dump();  // numbers and booleans: JSON's text is valid YAML
  }
}

}  // namespace

std::string Experiment::resolved_yaml() const {
  YAML::Emitter out;
  emit(out, resolved());
  return std::string(out.c_str()) + "\n";
}

namespace {

// A point as a sweep gives it: without `planner`, finish_point chooses it from the point's keys.
struct Draft : Point {
  std::optional<plan::Strategy> planner_key;  // sweep.planner
};

// The cartesian product of one sweep mapping's dimensions over the defaults, in this order (the
// last varies fastest); bounded before expansion by the product of the dimensions' sizes.
std::vector<Draft> expand_sweep(const Node& sweep, const Draft& def, const std::string& path) {
  using Parse = std::function<void(Draft&, const Node&)>;
  const std::vector<std::pair<const char*, Parse>> dims = {
      {"base", [](Draft& p, const Node& v) { p.base = format_name(v); }},
      {"method", [](Draft& p, const Node& v) { p.method = method_of(v); }},
      {"granularity",
       [](Draft& p, const Node& v) { p.granularity = one_of(v, profile::kGranularities); }},
      {"mode", [](Draft& p, const Node& v) { p.mode = one_of(v, profile::kModes); }},
      {"planner", [](Draft& p, const Node& v) { p.planner_key = one_of(v, plan::kStrategies); }},
      {"restore_top", [](Draft& p, const Node& v) { p.percent = percent(v); }},
      {"by", [](Draft& p, const Node& v) { p.by = one_of(v, plan::kBys); }},
      {"budget_bpw",
       [](Draft& p, const Node& v) {
         const double b = v.number();
         if (!(b > 0 && b <= 32)) v.fail("bits per weight in (0, 32]");
         p.budget_bpw = b;
       }},
      {"seed", [](Draft& p, const Node& v) { p.seed = uint64_t(v.count(0)); }},
  };
  sweep.only({"base", "method", "granularity", "mode", "planner", "restore_top", "by", "budget_bpw",
              "seed"});
  double product = 1;
  for (const auto& [name, parse] : dims)
    if (sweep.has(name)) product *= double(std::max<size_t>(1, sweep.at(name).values().size()));
  if (product > double(kMaxSweepPoints))
    throw ConfigError(fmt::format("{}: {}: {:.0f} points; at most {} (split it into files)", path,
                                  sweep.key, product, kMaxSweepPoints));
  std::vector<Draft> points{def};
  for (const auto& [name, parse] : dims) {
    if (!sweep.has(name)) continue;
    std::vector<Draft> next;
    for (const Draft& p : points)
      for (const Node& v : sweep.at(name).values()) next.push_back(p), parse(next.back(), v);
    points = std::move(next);
  }
  return points;
}

// models, data and calibration: what every stage reads.
void read_inputs(const Node& top, Experiment& e) {
  if (top.has("models"))
    for (const Node& m : top.at("models").values()) e.models.push_back(m.text());
  if (top.has("data")) {
    const Node d = top.at("data");
    d.only({"calib", "ppl", "mmlu", "tasks"});
    if (d.has("calib")) e.calib = d.at("calib").text();
    if (d.has("ppl")) e.ppl = d.at("ppl").text();
    if (d.has("mmlu")) e.mmlu = d.at("mmlu").text();
    if (d.has("tasks")) e.tasks_dir = d.at("tasks").text();
  }
  if (top.has("calibration")) {
    const Node c = top.at("calibration");
    c.only({"samples", "seq_len", "seed"});
    if (c.has("samples")) e.samples = c.at("samples").count(1);
    if (c.has("seq_len")) e.seq_len = c.at("seq_len").count(2);
    if (c.has("seed")) e.calib_seed = uint64_t(c.at("seed").count(0));
  }
}

// profile: the sweep's defaults for base, method, granularity and mode, and the proxies.
Draft read_profile(const Node& top, Experiment& e) {
  Draft def;
  def.base = "nf4", def.method = quant::Method::RTN;
  def.granularity = profile::Granularity::LINEAR, def.mode = profile::Mode::QUANTIZE_ONE;
  if (top.has("profile")) {
    const Node p = top.at("profile");
    p.only({"base", "method", "granularity", "mode", "proxies"});
    if (p.has("proxies")) e.proxies = p.at("proxies").flag();
    if (p.has("base")) def.base = format_name(p.at("base"));
    if (p.has("method")) def.method = method_of(p.at("method"));
    if (p.has("granularity"))
      def.granularity = one_of(p.at("granularity"), profile::kGranularities);
    if (p.has("mode")) def.mode = one_of(p.at("mode"), profile::kModes);
  }
  return def;
}

// plan and export.
void read_plan_export(const Node& top, Experiment& e) {
  if (top.has("plan")) {
    const Node p = top.at("plan");
    p.only({"candidates", "fused_groups"});
    if (p.has("candidates"))
      for (const Node& c : p.at("candidates").values()) e.candidates.push_back(format_name(c));
    if (p.has("fused_groups")) e.fused_groups = p.at("fused_groups").flag();
  }
  if (top.has("export")) {
    const Node x = top.at("export");
    x.only({"to"});
    for (const Node& t : x.at("to").values())
      e.export_to.push_back(name_of(t, exporting::kTargets));
  }
}

void read_eval(const Node& top, Experiment& e) {
  if (top.has("eval")) {
    const Node v = top.at("eval");
    v.only({"ppl_protocol", "ctx", "kld", "mmlu_protocol", "shots", "mmlu_limit", "batch", "tasks",
            "tasks_limit", "speed"});
    if (v.has("ppl_protocol"))
      e.eval.ppl_protocol = one_of(v.at("ppl_protocol"), eval::kPplProtocols);
    if (v.has("ctx")) e.eval.ctx = v.at("ctx").count(2);
    if (v.has("kld")) e.eval.kld = v.at("kld").flag();
    if (v.has("mmlu_protocol"))
      e.eval.mmlu_protocol = one_of(v.at("mmlu_protocol"), eval::kMmluProtocols);
    if (v.has("shots")) e.eval.shots = v.at("shots").count(0);
    if (v.has("mmlu_limit")) e.eval.mmlu_limit = v.at("mmlu_limit").count(0);
    if (v.has("batch")) e.eval.batch = v.at("batch").count(1);
    if (v.has("tasks"))
      for (const Node& t : v.at("tasks").values()) {  // a list, or "arc_easy,piqa"
        std::stringstream names(t.text());
        for (std::string n; std::getline(names, n, ',');) e.eval.tasks.push_back(n);
      }
    if (v.has("tasks_limit")) e.eval.tasks_limit = v.at("tasks_limit").count(0);
    if (v.has("speed")) e.eval.speed = v.at("speed").flag();
  }
}

// The sweep: one mapping, or a list of them whose points are joined (duplicates dropped).
std::vector<Draft> sweep_points(const Node& top, const Draft& def, const std::string& path) {
  const Node sweep =
      top.has("sweep") ? top.at("sweep") : Node{YAML::Node(YAML::NodeType::Map), path, "sweep"};
  std::vector<Draft> points;
  if (sweep.n.IsSequence()) {
    if (sweep.n.size() == 0) sweep.fail("a mapping or a non-empty list of mappings");
    for (size_t i = 0; i < sweep.n.size(); ++i) {
      std::vector<Draft> part = expand_sweep(sweep.at(i), def, path);
      points.insert(points.end(), part.begin(), part.end());
      if (points.size() > kMaxSweepPoints)
        throw ConfigError(fmt::format("{}: sweep: more than {} points (split it into files)", path,
                                      kMaxSweepPoints));
    }
  } else {
    points = expand_sweep(sweep, def, path);
  }
  return points;
}

// What a compressed-tensors export of point p's plans would refuse (`used`: the formats its plans
// may use), before any work.
void check_exportable_point(const Point& p, const Experiment& e,
                            const std::vector<std::string>& used, bool restoring,
                            const std::string& path) {
  for (const auto& f : used) {
    const std::string why =
        exporting::compressed_tensors_unsupported(formats::FormatSpec::parse(f), 0);
    if (!why.empty())
      throw ConfigError(fmt::format("{}: export.to compressed-tensors: {} {}: {}", path,
                                    f == p.base ? "base" : "plan.candidates:", f, why));
  }
  if (formats::FormatSpec::parse(p.base).dense() || (restoring && *p.percent >= 100.0))
    throw ConfigError(
        fmt::format("{}: export.to compressed-tensors: point {} quantizes no layer (nothing for a "
                    "compressed-tensors config to declare)",
                    path, point_label(p)));
  if (p.planner != plan::Strategy::UNIFORM && p.granularity == profile::Granularity::LINEAR &&
      !e.fused_groups)
    throw ConfigError(fmt::format(
        "{}: export.to compressed-tensors: needs plan.fused_groups: true (vLLM fuses q/k/v "
        "and gate/up, so each group must share one format)",
        path));
}

// Completes point p (its planner, its method's formats) and checks it against the rest of the
// file, before any work; then drops what its planner does not use, so that equal work is one
// point.
void finish_point(Draft& p, const Experiment& e, const std::string& path) {
  using plan::Strategy;
  p.planner = p.planner_key.value_or(p.budget_bpw ? Strategy::BUDGET
                                     : p.percent  ? Strategy::RESTORE_TOP
                                                  : Strategy::UNIFORM);
  const bool restoring = p.planner == Strategy::RESTORE_TOP || p.planner == Strategy::RANDOM;
  if (restoring && !p.percent)
    throw ConfigError(fmt::format("{}: sweep.restore_top: needed by the {} planner", path,
                                  plan::kStrategies.name(p.planner)));
  if (p.planner == Strategy::BUDGET && !p.budget_bpw)
    throw ConfigError(fmt::format("{}: sweep.budget_bpw: needed by the budget planner", path));
  // HQQ and the _fz formats go together (quant::check_formats says so per layer, later); in
  // a sweep an int base with method hqq names its _fz variant, so one `base` list serves every
  // method of a methods table.
  p.base = quant::method_format(p.method, p.base);
  std::vector<std::string> used{p.base};
  if (p.planner == Strategy::BUDGET)
    for (const auto& c : e.candidates) used.push_back(quant::method_format(p.method, c));
  for (const auto& f : used) {
    const auto spec = formats::FormatSpec::parse(f);
    if (spec.dense() || quant::method_traits(p.method).float_zeros == spec.float_zero) continue;
    throw ConfigError(fmt::format(
        "{}: {} {} with method {}: hqq quantizes to the int _fz formats (e.g. int4_g64_fz), "
        "and only hqq makes them",
        path, f == p.base ? "base" : "plan.candidates:", f, quant::method_name(p.method)));
  }
  if (std::count(e.export_to.begin(), e.export_to.end(), "compressed-tensors"))
    check_exportable_point(p, e, used, restoring, path);
  // The planner's own rule (plan/planner.cpp), checked before any work: profiles of several
  // bases add up only as quantize-one KLs.
  const bool several = std::any_of(used.begin() + 1, used.end(), [&](const std::string& f) {
    return f != p.base && !formats::FormatSpec::parse(f).dense();
  });
  if (p.planner == Strategy::BUDGET && several && p.mode == profile::Mode::RESTORE_ONE)
    throw ConfigError(fmt::format(
        "{}: a budget point over plan.candidates needs profile mode quantize-one (restore-one "
        "KL gains of different bases start from different baselines and do not add up)",
        path));
  // Drop what the point's planner does not use, so that equal work is one point.
  if (!restoring) p.percent.reset(), p.by.reset();
  if (restoring && !p.by) p.by = plan::By::COUNT;
  if (p.planner != Strategy::BUDGET) p.budget_bpw.reset();
  if (p.planner != Strategy::RANDOM) p.seed.reset();
  if (p.planner == Strategy::RANDOM && !p.seed) p.seed = 0;
  if (p.planner == Strategy::UNIFORM) p.granularity.reset(), p.mode.reset();  // no profile
}

Experiment from_yaml(const YAML::Node& root, const std::string& path) {
  const Node top{root, path, ""};
  top.only({"name", "models", "data", "calibration", "profile", "plan", "sweep", "eval", "output",
            "max_gpu_memory", "export"});
  Experiment e;
  e.path = path;
  e.name = top.at("name").text();
  if (top.has("max_gpu_memory")) {
    e.max_gpu_memory = top.at("max_gpu_memory").text();
    parse_size(e.max_gpu_memory, path + ": max_gpu_memory");
  }
  read_inputs(top, e);
  const Draft def = read_profile(top, e);
  read_plan_export(top, e);
  read_eval(top, e);
  if (e.eval.tasks.empty() != e.tasks_dir.empty())
    throw ConfigError(fmt::format("{}: {}", path,
                                  e.tasks_dir.empty()
                                      ? "eval.tasks: needs data.tasks (the tasks' directory)"
                                      : "data.tasks: needs eval.tasks (the tasks to run)"));
  e.output = top.has("output") ? top.at("output").text() : "results/" + e.name;

  std::set<std::string> seen;
  for (Draft& d : sweep_points(top, def, path)) {
    finish_point(d, e, path);
    const Point& p = d;  // the draft's planner_key is spent
    if (seen.insert(p.to_json().dump()).second) e.points.push_back(p);
  }
  return e;
}

}  // namespace
}  // namespace kldq::experiment
