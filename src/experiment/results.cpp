// runs.jsonl records, their merge across shards, and the summary tables made from them.
#include "kldq/experiment/results.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/io/csv.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/plan/planner.hpp"
#include "kldq/profile/profile.hpp"

namespace kldq::experiment {

namespace fs = std::filesystem;

const std::vector<std::string> kSummaryColumns = {"model_name",
                                                  "point",
                                                  "label",
                                                  "base",
                                                  "method",
                                                  "granularity",
                                                  "mode",
                                                  "planner",
                                                  "percent",
                                                  "by",
                                                  "budget_bpw",
                                                  "seed",
                                                  "bits_per_weight",
                                                  "weight_gib",
                                                  "ppl",
                                                  "ppl_ref",
                                                  "kl_mean",
                                                  "kl_stderr",
                                                  "plan_predicted_kl",
                                                  "top1_agree",
                                                  "mmlu_acc",
                                                  "mmlu_acc_ref",
                                                  "flip_rate",
                                                  "answer_change_rate"};

std::string point_label(const Point& p) {
  std::string s = p.base + " " + quant::method_name(p.method);
  if (p.granularity) s += fmt::format(" {}", profile::kGranularities.name(*p.granularity));
  if (p.mode == profile::Mode::RESTORE_ONE) s += fmt::format(" {}", profile::kModes.name(*p.mode));
  s += fmt::format(" {}", plan::kStrategies.name(p.planner));
  if (p.percent) s += fmt::format(" {:g}% by {}", *p.percent, p.by ? plan::kBys.name(*p.by) : "");
  if (p.budget_bpw) s += fmt::format(" {:g} bpw", *p.budget_bpw);
  if (p.seed) s += fmt::format(" seed {}", *p.seed);
  return s;
}

std::string stage_label(const Stage& s, const Experiment& e) {
  if (s.kind == "profile")
    return fmt::format(
        "{}/{} {} {}", s.inputs["base"].get<std::string>(), s.inputs["method"].get<std::string>(),
        s.inputs["granularity"].get<std::string>(), s.inputs["mode"].get<std::string>());
  if (s.point) return fmt::format("point {} ({})", *s.point, point_label(e.points.at(*s.point)));
  return "bf16 model";
}

std::string runs_file_name(const Shard& shard) {
  if (shard.whole()) return "runs.jsonl";
  // From the numbers, so that "01/2" and "1/2" name one file.
  return fmt::format("runs.shard-{}-of-{}.jsonl", shard.index, shard.count);
}

std::vector<nlohmann::json> read_runs(const fs::path& file) {
  std::vector<nlohmann::json> out;
  std::error_code ec;
  if (!fs::exists(file, ec)) return out;
  const auto record = [&](const nlohmann::json& j, const std::string& where) {
    if (!j.is_object() || !j.contains("point") || !j["point"].is_number_integer() ||
        !j.contains("model_id") || !j["model_id"].is_string() ||
        (j.contains("eval_key") && !j["eval_key"].is_string()))
      throw IoError(fmt::format(
          "{}: not a run record (a JSON object with an integer point and string model_id and "
          "eval_key)",
          where));
    out.push_back(j);
  };
  io::for_each_jsonl_row(read_input_file(file, kMaxDataBytes, false), file.string(), false, record);
  return out;
}

void write_runs(const fs::path& file, const std::vector<nlohmann::json>& records) {
  std::string text;
  for (const auto& r : records) text += r.dump() + "\n";
  io::write_file_atomic(file, text);
}

std::vector<nlohmann::json> read_all_runs(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& f : fs::directory_iterator(dir, ec)) {
    const std::string name = f.path().filename().string();
    if (name.rfind("runs", 0) == 0 && f.path().extension() == ".jsonl") files.push_back(f.path());
  }
  if (ec) throw IoError(fmt::format("{}: cannot list ({})", dir.string(), ec.message()));
  if (files.empty())
    throw IoError(fmt::format("{}: no runs.jsonl (not a kldq run directory, or nothing finished)",
                              dir.string()));
  std::sort(files.begin(), files.end());
  // The configuration the directory holds now: its evaluations' keys, from the manifest.
  std::map<std::string, nlohmann::json> current;  // eval key -> its point now
  const bool filter = fs::is_regular_file(dir / "manifest.json", ec);
  // (Held in a variable: a range-for over a member of a temporary would dangle.)
  const nlohmann::json manifest = filter ? io::read_json_file(dir / "manifest.json") : nullptr;
  if (filter) try {
      for (const auto& m : manifest.at("models"))
        for (const auto& s : m.at("stages"))
          if (s.at("kind") == "eval") current[s.at("key").get<std::string>()] = s.at("point");
    } catch (const nlohmann::json::exception& e) {
      throw IoError(fmt::format("{}: not a kldq run manifest ({})",
                                (dir / "manifest.json").string(), e.what()));
    }
  std::vector<nlohmann::json> all;
  std::map<std::string, size_t> index;  // "model_id eval_key" -> position in all
  std::map<std::string, size_t> model_order;
  for (const auto& f : files)
    for (auto& r : read_runs(f)) {
      const std::string key = r.value("eval_key", "");
      if (filter && !current.count(key)) continue;  // a point of an earlier configuration
      if (filter) r["point"] = current[key];        // its index in this configuration
      const std::string id = r["model_id"].dump() + " " + key;
      model_order.emplace(r["model_id"].dump(), model_order.size());
      if (auto it = index.find(id); it != index.end())
        all[it->second] = std::move(r);
      else
        index.emplace(id, all.size()), all.push_back(std::move(r));
    }
  std::stable_sort(all.begin(), all.end(), [&](const auto& a, const auto& b) {
    const size_t ma = model_order[a["model_id"].dump()], mb = model_order[b["model_id"].dump()];
    return ma != mb ? ma < mb
                    : a["point"].template get<int64_t>() < b["point"].template get<int64_t>();
  });
  return all;
}

nlohmann::json task_record_metrics(const nlohmann::json& m) {
  nlohmann::json r = nlohmann::json::object();
  if (!m.contains("tasks") || !m["tasks"].is_object() || m["tasks"].empty()) return r;
  double sum = 0, sum_ref = 0;
  bool all_ref = true;
  r["task_names"] = nlohmann::json::array();
  for (const auto& [name, t] : m["tasks"].items()) {
    r["task_names"].push_back(name);
    const bool norm = t.contains("acc_norm");
    for (const char* k : {"acc", "acc_norm", "flip_rate"})
      if (t.contains(k)) r[name + "_" + k] = t[k];
    sum += t.value(norm ? "acc_norm" : "acc", 0.0);
    const char* ref = norm ? "acc_norm_ref" : "acc_ref";
    all_ref = all_ref && t.contains(ref);
    sum_ref += t.value(ref, 0.0);
  }
  const auto n = double(m["tasks"].size());
  r["tasks_mean"] = sum / n;
  if (all_ref) r["tasks_mean_ref"] = sum_ref / n;
  return r;
}

nlohmann::json record_metrics(const eval::Metrics& m) {
  nlohmann::json r = {{"weight_bytes", m.memory.weight_bytes},
                      {"weight_gib", double(m.memory.weight_bytes) / double(uint64_t{1} << 30)},
                      {"bits_per_weight", m.memory.bits_per_weight},
                      {"seconds", m.figures.seconds}};
  if (const auto& p = m.ppl) {
    r["ppl"] = p->ppl;
    io::put_optional(r, "ppl_ref", p->ppl_ref);
    if (p->kl)
      r["kl_mean"] = p->kl->kl_mean, r["kl_stderr"] = p->kl->kl_stderr,
      r["top1_agree"] = p->kl->top1_agree;
    io::put_optional(r, "plan_predicted_kl", p->plan_predicted_kl);
  }
  if (const auto& q = m.mmlu) {
    r["mmlu_acc"] = q->acc;
    if (q->flips)
      r["mmlu_acc_ref"] = q->flips->acc_ref, r["flip_rate"] = q->flips->flip_rate,
      r["answer_change_rate"] = q->flips->answer_change_rate;
  }
  // The tasks' and the speed's records, as their modules write them.
  nlohmann::json records = nlohmann::json::object();
  if (m.tasks) records["tasks"] = m.tasks->tasks;
  if (!m.speed.is_null()) records["speed"] = m.speed;
  r.update(task_record_metrics(records));
  r.update(speed_record_metrics(records));
  return r;
}

const std::vector<std::string> kSpeedColumns = {"prefill_tps_b1", "decode_tps_b1",
                                                "prefill_tps_b16", "decode_tps_b16"};

nlohmann::json speed_record_metrics(const nlohmann::json& m) {
  nlohmann::json r = nlohmann::json::object();
  if (!m.contains("speed") || !m["speed"].is_object()) return r;
  for (const auto& [batch, v] : m["speed"].items()) {
    if (!v.is_object()) continue;  // "prompt", "new_tokens"
    for (const auto& [key, col] : {std::pair{"prefill_tokens_per_second", "prefill_tps_"},
                                   std::pair{"decode_tokens_per_second", "decode_tps_"}})
      if (v.contains(key)) r[std::string(col) + batch] = v[key];  // e.g. decode_tps_b16
  }
  return r;
}

std::vector<std::string> task_columns(const std::vector<nlohmann::json>& records) {
  std::vector<std::string> names;  // tasks seen, built-in ones first in their order
  for (const auto& r : records)
    if (r.contains("task_names") && r["task_names"].is_array())
      for (const auto& t : r["task_names"]) {
        if (!t.is_string()) continue;
        const auto& name = t.get_ref<const std::string&>();
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
      }
  const auto& b = eval::builtin_tasks();
  auto rank = [&](const std::string& n) {
    return size_t(std::find(b.begin(), b.end(), n) - b.begin());
  };
  std::sort(names.begin(), names.end(), [&](const std::string& x, const std::string& y) {
    return rank(x) != rank(y) ? rank(x) < rank(y) : x < y;
  });
  // A column only where some record has it (WinoGrande and BoolQ have no acc_norm).
  auto present = [&](const std::string& k) {
    return std::any_of(records.begin(), records.end(),
                       [&](const auto& r) { return r.contains(k); });
  };
  std::vector<std::string> cols;
  for (const auto& n : names)
    for (const char* k : {"_acc", "_acc_norm", "_flip_rate"})
      if (present(n + k)) cols.push_back(n + k);
  for (const char* k : {"tasks_mean", "tasks_mean_ref"})
    if (present(k)) cols.push_back(k);
  return cols;
}

std::string summary_csv(const std::vector<nlohmann::json>& records) {
  std::vector<std::string> columns = kSummaryColumns;
  for (const auto& c : task_columns(records)) columns.push_back(c);
  for (const auto& c : kSpeedColumns)  // only where measured (eval.speed)
    if (std::any_of(records.begin(), records.end(), [&](const auto& r) { return r.contains(c); }))
      columns.push_back(c);
  auto row = [&](auto&& field) {
    std::string line;
    for (size_t c = 0; c < columns.size(); ++c) line += (c ? "," : "") + field(columns[c]);
    return line + "\r\n";
  };
  std::string text = row([](const std::string& k) { return io::csv_field(k); });
  for (const auto& r : records)
    text += row([&](const std::string& k) { return io::csv_field(r.value(k, nlohmann::json())); });
  return text;
}

namespace {

// How the plans' predicted KLs tracked the measured ones: the mean of |predicted - measured| /
// measured over the points that have both, and the worst point; "" when none has.
std::string prediction_line(const std::vector<nlohmann::json>& records) {
  double sum = 0, worst = -1;
  int n = 0;
  std::string worst_point;
  for (const auto& r : records) {
    const auto p = r.find("plan_predicted_kl"), m = r.find("kl_mean");
    if (p == r.end() || m == r.end() || !p->is_number() || !m->is_number()) continue;
    const double measured = m->get<double>();
    if (!(measured > 0)) continue;
    const double rel = std::abs(p->get<double>() - measured) / measured;
    sum += rel, ++n;
    if (rel > worst)
      worst = rel, worst_point = r.value("label", r.value("point", nlohmann::json())).dump();
  }
  if (n == 0) return "";
  return fmt::format(
      "\nPlanner predictions against measured KL: mean relative error {:.1f} % over {} point(s); "
      "worst {:.1f} % ({}).\n",
      100 * sum / n, n, 100 * worst, worst_point);
}

// The zero-shot tasks per point: each task's headline accuracy (acc_norm where the task defines
// it, else acc) with its flip rate, and their mean; "" without tasks.
std::string tasks_markdown(const std::vector<nlohmann::json>& records) {
  std::vector<std::string> names;
  for (const auto& c : task_columns(records))
    if (c.size() > 4 && c.compare(c.size() - 4, 4, "_acc") == 0)
      names.push_back(c.substr(0, c.size() - 4));
  if (names.empty()) return "";
  std::string head = "| model | # |", rule = "|---|---|";
  for (const auto& n : names) head += " " + n + " |", rule += "---|";
  std::string text =
      "\nZero-shot tasks (acc_norm where the task defines it, else acc; flip rate in "
      "brackets):\n\n" +
      head + " mean |\n" + rule + "---|\n";
  auto cell = [](const nlohmann::json& r, const std::string& k) {
    const auto v = r.value(k, nlohmann::json());
    return v.is_number() ? fmt::format("{:.4f}", v.get<double>()) : std::string();
  };
  for (const auto& r : records) {
    text += fmt::format("| {} | {} |", r.value("model_name", ""),
                        r.value("point", nlohmann::json()).dump());
    for (const auto& n : names) {
      std::string c = cell(r, n + "_acc_norm");
      if (c.empty()) c = cell(r, n + "_acc");
      if (const std::string f = cell(r, n + "_flip_rate"); !f.empty()) c += " (" + f + ")";
      text += " " + c + " |";
    }
    text += " " + cell(r, "tasks_mean") + " |\n";
  }
  return text;
}

}  // namespace

std::string summary_markdown(const std::vector<nlohmann::json>& records) {
  struct Col {
    const char* key;
    const char* title;
    const char* fmt;  // "" for text
  };
  std::vector<Col> cols = {{"model_name", "model", ""},
                           {"point", "#", ""},
                           {"label", "plan", ""},
                           {"bits_per_weight", "bpw", "{:.3f}"},
                           {"weight_gib", "GiB", "{:.4f}"},
                           {"ppl", "ppl", "{:.4f}"},
                           {"kl_mean", "KL", "{:.5f}"},
                           {"kl_stderr", "± KL", "{:.5f}"},
                           {"plan_predicted_kl", "predicted KL", "{:.5f}"},
                           {"top1_agree", "top-1", "{:.4f}"},
                           {"mmlu_acc", "MMLU", "{:.4f}"},
                           {"flip_rate", "flips", "{:.4f}"}};
  std::string head = "|", rule = "|";
  if (std::any_of(records.begin(), records.end(),
                  [](const auto& r) { return r.contains("tasks_mean"); }))
    cols.push_back({"tasks_mean", "tasks", "{:.4f}"});
  for (const auto& c : cols) head += fmt::format(" {} |", c.title), rule += "---|";
  std::string text = head + "\n" + rule + "\n";
  for (const auto& r : records) {
    text += "|";
    for (const auto& c : cols) {
      const nlohmann::json v = r.value(c.key, nlohmann::json());
      std::string cell = v.is_null()     ? ""
                         : v.is_string() ? v.get<std::string>()
                         : *c.fmt && v.is_number()
                             ? fmt::format(fmt::runtime(c.fmt), v.get<double>())
                             : v.dump();
      text += " " + cell + " |";
    }
    text += "\n";
  }
  return text + prediction_line(records) + tasks_markdown(records);
}

}  // namespace kldq::experiment
