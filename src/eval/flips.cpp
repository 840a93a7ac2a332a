// Predictions JSONL and answer flips with Wilson intervals.
#include "kldq/eval/flips.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <fstream>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/eval/stats.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::eval {
namespace {

std::string letter(int i) {
  return std::string(1, static_cast<char>('A' + i));
}

// A rate's interval as the file holds it: [low, high].
std::pair<double, double> interval_from_json(const io::Doc& d) {
  if (d.size() != 2) d.fail(fmt::format("expected [low, high], got {} values", d.size()));
  return {d[0].finite(), d[1].finite()};
}

}  // namespace

std::string predictions_jsonl(const std::vector<MmluPrediction>& preds,
                              const std::string& protocol) {
  std::string out;
  for (const auto& p : preds) {
    const nlohmann::json j = {{"subject", p.subject},          {"index", p.index},
                              {"answer", letter(p.answer)},    {"pred", letter(p.pred)},
                              {"correct", p.pred == p.answer}, {"logprobs", p.logprobs},
                              {"truncated", p.truncated},      {"protocol", protocol}};
    out += j.dump() + "\n";
  }
  return out;
}

std::vector<MmluPrediction> read_predictions(const std::filesystem::path& path,
                                             std::string* protocol) {
  return parse_predictions(read_input_file(path, kMaxDataBytes, /*config=*/true), path.string(),
                           protocol);
}

std::vector<MmluPrediction> parse_predictions(const std::string& text, const std::string& where,
                                              std::string* protocol) {
  std::vector<MmluPrediction> out;
  const auto row = [&](const nlohmann::json& j, const std::string& at) {
    try {
      MmluPrediction p;
      p.subject = j.at("subject").get<std::string>();
      p.index = j.at("index").get<int64_t>();
      const auto a = j.at("answer").get<std::string>(), q = j.at("pred").get<std::string>();
      if (a.size() != 1 || a[0] < 'A' || a[0] > 'D' || q.size() != 1 || q[0] < 'A' || q[0] > 'D')
        throw IoError("answer and pred must be letters A-D");
      p.answer = a[0] - 'A', p.pred = q[0] - 'A';
      p.logprobs = j.at("logprobs").get<std::array<double, 4>>();
      p.truncated = j.at("truncated").get<bool>();
      const auto proto = j.at("protocol").get<std::string>();
      if (protocol && out.empty()) *protocol = proto;
      if (protocol && proto != *protocol)
        throw IoError(fmt::format("protocol {} differs from the first row's {}", proto, *protocol));
      out.push_back(std::move(p));
    } catch (const std::exception& e) {
      throw IoError(fmt::format("{}: not a kldq prediction row ({})", at, e.what()));
    }
  };
  // Lines parsed with nesting bounded (an IoError naming the file and line when malformed).
  io::for_each_jsonl_row(text, where, false, row);
  return out;
}

nlohmann::json to_json(const Flips& f, const std::string& acc_ref_key) {
  return {{"flip_rate", f.flip_rate},
          {"flip_rate_ci", f.flip_rate_ci},
          {"answer_change_rate", f.answer_change_rate},
          {"answer_change_rate_ci", f.answer_change_rate_ci},
          {"c2w", f.c2w},
          {"c2w_rate_ci", f.c2w_rate_ci},
          {"w2c", f.w2c},
          {"w2c_rate_ci", f.w2c_rate_ci},
          {acc_ref_key, f.acc_ref}};
}

Flips flips_from_json(const io::Doc& d, const std::string& acc_ref_key) {
  return {d["flip_rate"].number(0, 1),          interval_from_json(d["flip_rate_ci"]),
          d["answer_change_rate"].number(0, 1), interval_from_json(d["answer_change_rate_ci"]),
          d["c2w"].integer(0, INT64_MAX),       interval_from_json(d["c2w_rate_ci"]),
          d["w2c"].integer(0, INT64_MAX),       interval_from_json(d["w2c_rate_ci"]),
          d[acc_ref_key].number(0, 1)};
}

Flips flip_rates(const std::vector<Answered>& ref, const std::vector<Answered>& m) {
  check(ref.size() == m.size(), "flip_rates: lists of different lengths");
  int64_t flips = 0, changes = 0, c2w = 0, w2c = 0, ref_correct = 0;
  for (size_t i = 0; i < m.size(); ++i) {
    const bool rc = ref[i].pred == ref[i].answer, qc = m[i].pred == m[i].answer;
    ref_correct += rc, flips += rc != qc, changes += ref[i].pred != m[i].pred;
    c2w += rc && !qc, w2c += !rc && qc;
  }
  const int64_t n = static_cast<int64_t>(m.size());
  const double dn = n > 0 ? double(n) : 1.0;
  return {double(flips) / dn,
          wilson_interval(flips, n),
          double(changes) / dn,
          wilson_interval(changes, n),
          c2w,
          wilson_interval(c2w, n),
          w2c,
          wilson_interval(w2c, n),
          double(ref_correct) / dn};
}

Flips flip_summary(const std::vector<MmluPrediction>& ref, const std::vector<MmluPrediction>& m,
                   const std::string& what) {
  if (ref.size() != m.size())
    throw ConfigError(
        fmt::format("{}: {} reference predictions for {} questions", what, ref.size(), m.size()));
  std::vector<Answered> a, b;
  for (size_t i = 0; i < m.size(); ++i) {
    const auto &r = ref[i], &q = m[i];
    if (r.subject != q.subject || r.index != q.index || r.answer != q.answer)
      throw ConfigError(fmt::format(
          "{}: reference question {} is {} #{}, this run's is {} #{}: not the same questions", what,
          i + 1, r.subject, r.index, q.subject, q.index));
    a.push_back({r.answer, r.pred}), b.push_back({q.answer, q.pred});
  }
  return flip_rates(a, b);
}

}  // namespace kldq::eval
