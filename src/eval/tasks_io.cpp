// Zero-shot task predictions as JSONL (so later runs compute flips without re-running the
// reference) and flips per task against a reference's predictions (docs/PROTOCOLS.md, "Flips").
#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/eval/flips.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::eval {

std::string task_predictions_jsonl(const Task& task, const std::vector<TaskPrediction>& preds) {
  std::string out;
  for (const TaskPrediction& p : preds)
    out += nlohmann::json({{"task", task.name},
                           {"index", p.index},
                           {"gold", p.gold},
                           {"pred", p.pred},
                           {"pred_norm", p.pred_norm},
                           {"loglik", p.loglik},
                           {"truncated", p.truncated}})
               .dump() +
           "\n";
  return out;
}

std::vector<TaskPrediction> read_task_predictions(const std::filesystem::path& path,
                                                  const std::string& task) {
  std::vector<TaskPrediction> out;
  const auto row = [&](const nlohmann::json& j, const std::string& where) {
    try {
      if (j.at("task").get<std::string>() != task) return;
      TaskPrediction p;
      p.index = j.at("index").get<int64_t>();
      p.gold = j.at("gold").get<int>(), p.pred = j.at("pred").get<int>();
      p.pred_norm = j.at("pred_norm").get<int>();
      p.loglik = j.at("loglik").get<std::vector<double>>();
      p.truncated = j.at("truncated").get<bool>();
      const int k = static_cast<int>(p.loglik.size());
      for (int v : {p.gold, p.pred, p.pred_norm})
        if (v < 0 || v >= k) throw IoError(fmt::format("choice {} of {}", v, k));
      out.push_back(std::move(p));
    } catch (const std::exception& e) {
      throw IoError(fmt::format("{}: not a kldq task prediction row ({})", where, e.what()));
    }
  };
  // Lines parsed with nesting bounded (an IoError naming the file and line when malformed).
  io::for_each_jsonl_row(read_input_file(path, kMaxDataBytes, /*config=*/true), path.string(),
                         false, row);
  return out;
}

nlohmann::json task_flips(const Task& task, const std::vector<TaskPrediction>& ref,
                          const std::vector<TaskPrediction>& m, const std::string& what) {
  if (ref.size() != m.size())
    throw ConfigError(fmt::format("{}: {} reference predictions of {} for {} items", what,
                                  ref.size(), task.name, m.size()));
  std::vector<Answered> a, b;
  for (size_t i = 0; i < m.size(); ++i) {
    if (ref[i].index != m[i].index || ref[i].gold != m[i].gold)
      throw ConfigError(
          fmt::format("{}: {} row {} is item {} (gold {}), this run's is item {} "
                      "(gold {}): not the same items",
                      what, task.name, i + 1, ref[i].index, ref[i].gold, m[i].index, m[i].gold));
    a.push_back({ref[i].gold, headline_pred(task, ref[i])});
    b.push_back({m[i].gold, headline_pred(task, m[i])});
  }
  return to_json(flip_rates(a, b), task.has_norm ? "acc_norm_ref" : "acc_ref");
}

}  // namespace kldq::eval
