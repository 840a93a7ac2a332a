// runs.jsonl records, their merge across shards, and the summary tables made from them.
#include "kldq/experiment/results.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/io/csv.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::experiment {

namespace fs = std::filesystem;

const std::vector<std::string> kRecordMetrics = {
    "weight_bytes",       "bits_per_weight",   "ppl",      "ppl_ref",      "kl_mean",
    "kl_stderr",          "top1_agree",        "mmlu_acc", "mmlu_acc_ref", "flip_rate",
    "answer_change_rate", "plan_predicted_kl", "seconds"};

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
  std::string s = p.base + " " + p.method;
  if (!p.granularity.empty()) s += " " + p.granularity;
  if (p.mode == "restore-one") s += " restore-one";
  s += " " + p.planner;
  if (p.percent) s += fmt::format(" {:g}% by {}", *p.percent, p.by);
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

std::string runs_file_name(const std::string& shard) {
  if (shard.empty()) return "runs.jsonl";
  // From the numbers, so that "01/2" and "1/2" name one file.
  const auto slash = shard.find('/');
  return fmt::format("runs.shard-{}-of-{}.jsonl", std::stoul(shard.substr(0, slash)),
                     std::stoul(shard.substr(slash + 1)));
}

std::vector<nlohmann::json> read_runs(const fs::path& file) {
  std::vector<nlohmann::json> out;
  std::error_code ec;
  if (!fs::exists(file, ec)) return out;
  std::istringstream in(read_input_file(file, kMaxDataBytes, false));
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const nlohmann::json j = io::parse_json(line, fmt::format("{}:{}", file.string(), n), false);
    if (!j.is_object() || !j.contains("point") || !j["point"].is_number_integer() ||
        !j.contains("model_id") || !j["model_id"].is_string() ||
        (j.contains("eval_key") && !j["eval_key"].is_string()))
      throw IoError(fmt::format(
          "{}:{}: not a run record (a JSON object with an integer point and string model_id and "
          "eval_key)",
          file.string(), n));
    out.push_back(j);
  }
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

std::string summary_csv(const std::vector<nlohmann::json>& records) {
  auto row = [](auto&& field) {
    std::string line;
    for (size_t c = 0; c < kSummaryColumns.size(); ++c)
      line += (c ? "," : "") + field(kSummaryColumns[c]);
    return line + "\r\n";
  };
  std::string text = row([](const std::string& k) { return io::csv_field(k); });
  for (const auto& r : records)
    text += row([&](const std::string& k) { return io::csv_field(r.value(k, nlohmann::json())); });
  return text;
}

std::string summary_markdown(const std::vector<nlohmann::json>& records) {
  struct Col {
    const char* key;
    const char* title;
    const char* fmt;  // "" for text
  };
  static const Col cols[] = {{"model_name", "model", ""},
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
  return text;
}

}  // namespace kldq::experiment
