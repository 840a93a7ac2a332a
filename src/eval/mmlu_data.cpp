// Loading MMLU: CSV directories (header or Hendrycks form, detected per file) and JSONL.
#include <fmt/format.h>

#include <fstream>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/io/csv.hpp"
#include "kldq/io/document.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::eval {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kHeader = {"question", "choice0", "choice1",
                                          "choice2",  "choice3", "answer"};

// "0".."3" (header form) or "A".."D" (Hendrycks form, or JSONL); -1 otherwise.
int parse_answer(const std::string& s, bool numeric) {
  if (s.size() != 1) return -1;
  if (numeric) return s[0] >= '0' && s[0] <= '3' ? s[0] - '0' : -1;
  return s[0] >= 'A' && s[0] <= 'D' ? s[0] - 'A' : -1;
}

void read_csv_split(const fs::path& dir, const std::string& suffix,
                    std::map<std::string, std::vector<MmluItem>>& out) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string subject = name.substr(0, name.size() - suffix.size());
    const auto rows = io::read_csv(entry.path());
    const bool header = !rows.empty() && rows[0].fields == kHeader;
    auto& items = out[subject];
    for (size_t r = header ? 1 : 0; r < rows.size(); ++r) {
      const auto& row = rows[r];
      if (row.fields.size() != 6)
        throw IoError(fmt::format("{}:{}: expected 6 fields (question, 4 choices, answer), got {}",
                                  entry.path().string(), row.line, row.fields.size()));
      MmluItem it;
      it.subject = subject;
      it.index = static_cast<int64_t>(items.size());
      it.question = row.fields[0];
      for (int c = 0; c < 4; ++c) it.choices[c] = row.fields[1 + c];
      it.answer = parse_answer(row.fields[5], header);
      if (it.answer < 0)
        throw IoError(fmt::format("{}:{}: answer \"{}\" out of range (expected {})",
                                  entry.path().string(), row.line, row.fields[5],
                                  header ? "0-3" : "A-D"));
      items.push_back(std::move(it));
    }
  }
}

MmluData read_jsonl(const fs::path& path) {
  MmluData d;
  // Lines parsed with nesting bounded (an IoError naming the file and line when malformed).
  const auto item = [&](const nlohmann::json& row, const std::string& where) {
    const auto bad = [&](const std::string& why) {
      return IoError(fmt::format("{}: {}", where, why));
    };
    if (!row.is_object() || !row.contains("question") || !row["question"].is_string() ||
        !row.contains("subject") || !row["subject"].is_string())
      throw bad("expected an object with string \"question\" and \"subject\"");
    if (!row.contains("choices") || !row["choices"].is_array() || row["choices"].size() != 4)
      throw bad("\"choices\" must be a list of 4 strings");
    MmluItem it;
    it.subject = row["subject"].get<std::string>();
    it.question = row["question"].get<std::string>();
    for (int c = 0; c < 4; ++c) {
      if (!row["choices"][c].is_string()) throw bad("\"choices\" must be a list of 4 strings");
      it.choices[c] = row["choices"][c].get<std::string>();
    }
    const auto& a = row.value("answer", nlohmann::json());
    it.answer = a.is_number_integer() ? (a.get<int64_t>() >= 0 && a.get<int64_t>() <= 3
                                             ? static_cast<int>(a.get<int64_t>())
                                             : -1)
                : a.is_string()       ? parse_answer(a.get<std::string>(), false)
                                      : -1;
    if (it.answer < 0)
      throw bad(fmt::format("answer {} out of range (0-3 or A-D)", io::shown_text(a.dump())));
    if (row.contains("split") && !row["split"].is_string())
      throw bad("\"split\" must be \"dev\" or \"test\"");
    const std::string split = row.value("split", std::string("test"));
    if (split != "test" && split != "dev")
      throw bad(fmt::format("split \"{}\": expected \"dev\" or \"test\"", split));
    auto& items = (split == "dev" ? d.dev : d.test)[it.subject];
    it.index = static_cast<int64_t>(items.size());
    items.push_back(std::move(it));
  };
  io::for_each_jsonl_row(read_input_file(path, kMaxDataBytes, false), path.string(), false, item);
  return d;
}

}  // namespace

MmluData load_mmlu(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw ConfigError(fmt::format("{}: no such file or directory", path.string()));
  if (!fs::is_directory(path, ec)) return read_jsonl(path);
  MmluData d;
  read_csv_split(path / "test", "_test.csv", d.test);
  read_csv_split(path / "dev", "_dev.csv", d.dev);
  if (d.test.empty())
    throw ConfigError(
        fmt::format("{}: no test/*_test.csv files (expected the MMLU layout: "
                    "dev/<subject>_dev.csv and test/<subject>_test.csv)",
                    path.string()));
  return d;
}

MmluProtocol parse_mmlu_protocol(const std::string& name, const char* option) {
  if (name == "fewshot") return MmluProtocol::FEWSHOT;  // an older spelling, not listed
  return kMmluProtocols.parse(name, option);
}

std::vector<MmluItem> mmlu_items(const MmluData& data, const MmluOptions& o) {
  std::vector<MmluItem> items;
  for (const auto& [subject, list] : data.test) {
    if (o.protocol == MmluProtocol::FEWSHOT && o.shots > 0) {
      const auto dev = data.dev.find(subject);
      const size_t have = dev == data.dev.end() ? 0 : dev->second.size();
      if (have < static_cast<size_t>(o.shots))
        throw ConfigError(fmt::format("MMLU subject {}: {} dev examples, {} shots asked", subject,
                                      have, o.shots));
    }
    for (const auto& it : list) {
      if (o.limit > 0 && static_cast<int64_t>(items.size()) >= o.limit) return items;
      items.push_back(it);
    }
  }
  if (items.empty()) throw ConfigError("MMLU: no test questions");
  return items;
}

}  // namespace kldq::eval
