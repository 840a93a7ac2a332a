// Loading the zero-shot tasks from their files as published (../shared/data/mc/README.md gives
// sources and lm-eval's recipes) and the generic JSONL form, into lm-eval's (context,
// continuation) pairs per choice (docs/PROTOCOLS.md, "Zero-shot tasks").
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/hash.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/unicode.hpp"

namespace kldq::eval {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The lines of a task file, each handed to `row` with its 1-based number; any error in a row
// becomes an IoError naming the file and line. Stops after `limit` items (0: all).
struct Lines {
  fs::path path;
  std::vector<std::string> lines;

  explicit Lines(const fs::path& p) : path(p) {
    std::error_code ec;
    if (!fs::exists(p, ec)) throw ConfigError(fmt::format("{}: no such file", p.string()));
    std::istringstream in(read_input_file(p, kMaxDataBytes, false));
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    while (!lines.empty() && lines.back().empty()) lines.pop_back();
  }
  [[noreturn]] void fail(size_t line, const std::string& why) const {
    throw IoError(fmt::format("{}:{}: {}", path.string(), line, why));
  }
};

std::string str(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_string()) throw std::runtime_error(fmt::format("\"{}\" is not a string", key));
  return v.get<std::string>();
}

int64_t chars(const std::string& s) {
  return static_cast<int64_t>(io::unicode::decode_utf8(s).size());
}

// An item whose choices all follow one context after the target delimiter " ".
TaskItem shared_context(const std::string& context, const std::vector<std::string>& choices,
                        int gold) {
  if (choices.size() < 2) throw std::runtime_error("fewer than two choices");
  if (gold < 0 || gold >= static_cast<int>(choices.size()))
    throw std::runtime_error(
        fmt::format("answer {} is not one of the {} choices", gold, choices.size()));
  if (context.empty()) throw std::runtime_error("empty context");
  TaskItem it;
  for (const std::string& c : choices) {
    it.contexts.push_back(context);
    it.continuations.push_back(" " + c);
    it.choice_chars.push_back(chars(c));
  }
  it.gold = gold;
  return it;
}

// ARC and OpenBookQA: {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}.
TaskItem arc_item(const json& j, bool question_prefix) {
  const json& q = j.at("question");
  std::vector<std::string> texts, labels;
  for (const json& c : q.at("choices"))
    texts.push_back(str(c, "text")), labels.push_back(str(c, "label"));
  std::string key = str(j, "answerKey");
  key.erase(0, key.find_first_not_of(' '));
  key.erase(key.find_last_not_of(' ') + 1);
  const auto at = std::find(labels.begin(), labels.end(), key);
  if (at == labels.end())
    throw std::runtime_error(fmt::format("answerKey \"{}\" is not one of the labels", key));
  const std::string stem = str(q, "stem");
  return shared_context(question_prefix ? "Question: " + stem + "\nAnswer:" : stem, texts,
                        static_cast<int>(at - labels.begin()));
}

// The label lines of PIQA's valid-labels.lst.
// `n`: the items read; `all`: whether that is every item of valid.jsonl (then the counts agree).
std::vector<int> piqa_labels(const fs::path& path, size_t n, bool all) {
  const Lines f(path);
  std::vector<int> out;
  for (size_t i = 0; i < f.lines.size() && i < n; ++i) {
    if (f.lines[i] != "0" && f.lines[i] != "1") f.fail(i + 1, "a label is 0 or 1");
    out.push_back(f.lines[i][0] - '0');
  }
  if (out.size() < n || (all && f.lines.size() != n))
    f.fail(f.lines.size(), fmt::format("{} labels for {} items", f.lines.size(), n));
  return out;
}

// Every non-overlapping `from` in `s` replaced by `to`, left to right (Python's str.replace).
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t at = 0;
  for (size_t p; (p = s.find(from, at)) != std::string::npos; at = p + from.size())
    out += s.substr(at, p - at) + to;
  return out + s.substr(at);
}

// lm-eval's HellaSwag `preprocess`: trim, " [title]" -> ". ", every "[...]" span removed
// (re.sub("\\[.*?\\]", "")), one pass of double spaces to single.
std::string hellaswag_clean(std::string s) {
  s.erase(0, s.find_first_not_of(" \t\n\r\f\v"));
  s.erase(s.find_last_not_of(" \t\n\r\f\v") + 1);
  s = replace_all(s, " [title]", ". ");
  std::string out;
  for (size_t at = 0;;) {
    const size_t open = s.find('[', at), close = s.find(']', open == std::string::npos ? at : open);
    if (open == std::string::npos || close == std::string::npos) {
      out += s.substr(at);
      break;
    }
    out += s.substr(at, open - at);
    at = close + 1;
  }
  return replace_all(out, "  ", " ");
}

// The stored contexts keep ctx_b as written, where lm-eval capitalizes it: unless the context
// ends a sentence, the letter after the last ". ", "! " or "? " (else after the first ": ") is
// upper-cased (the data README's fix; it restores lm-eval's context on its 1,000-item sample).
// ASCII letters only: in the whole file no context has a non-ASCII lowercase letter there.
std::string hellaswag_capitalize(std::string s) {
  if (s.empty() || std::string(".!?\"'").find(s.back()) != std::string::npos) return s;
  size_t at = std::string::npos;
  for (const char* sep : {". ", "! ", "? "}) {
    const size_t p = s.rfind(sep);
    if (p != std::string::npos && (at == std::string::npos || p > at)) at = p;
  }
  if (at == std::string::npos) at = s.find(": ");
  if (at != std::string::npos && at + 2 < s.size() && s[at + 2] >= 'a' && s[at + 2] <= 'z')
    s[at + 2] = static_cast<char>(s[at + 2] - 'a' + 'A');
  return s;
}

// WinoGrande's partial scoring: the options substituted into the context, the text after the
// blank scored as one shared continuation.
TaskItem winogrande_item(const json& j) {
  const std::string s = str(j, "sentence"), answer = str(j, "answer");
  const size_t blank = s.find('_');
  if (blank == std::string::npos) throw std::runtime_error("the sentence has no \"_\"");
  if (answer != "1" && answer != "2") throw std::runtime_error("answer is \"1\" or \"2\"");
  std::string rest = s.substr(blank + 1);
  rest.erase(0, rest.find_first_not_of(" \t\n\r\f\v"));
  rest.erase(rest.find_last_not_of(" \t\n\r\f\v") + 1);
  TaskItem it;
  for (const char* o : {"option1", "option2"}) {
    it.contexts.push_back(s.substr(0, blank) + str(j, o));
    it.continuations.push_back(" " + rest);
    it.choice_chars.push_back(chars(str(j, o)));
  }
  it.gold = answer[0] - '1';
  return it;
}

// BoolQ as SuperGLUE stores it (lm-eval's source): "title -- passage".
TaskItem boolq_item(const json& j) {
  if (!j.at("answer").is_boolean()) throw std::runtime_error("\"answer\" is not true or false");
  const std::string passage = str(j, "title") + " -- " + str(j, "passage");
  return shared_context(passage + "\nQuestion: " + str(j, "question") + "?\nAnswer:", {"no", "yes"},
                        j.at("answer").get<bool>() ? 1 : 0);
}

// The generic form: {"context", "choices": [...], "answer": index}.
TaskItem generic_item(const json& j) {
  std::vector<std::string> choices;
  if (!j.at("choices").is_array()) throw std::runtime_error("\"choices\" is not a list");
  for (const json& c : j.at("choices")) {
    if (!c.is_string()) throw std::runtime_error("a choice is not a string");
    choices.push_back(c.get<std::string>());
  }
  const json& a = j.at("answer");
  if (!a.is_number_integer() || a.get<int64_t>() < 0 ||
      a.get<int64_t>() >= static_cast<int64_t>(choices.size()))
    throw std::runtime_error(
        fmt::format("\"answer\" is not a choice's index (0 to {})", int64_t(choices.size()) - 1));
  return shared_context(str(j, "context"), choices, a.get<int>());
}

// Each line of `f` as JSON through `make`, up to `limit` items.
void read_jsonl(const Lines& f, int64_t limit, const std::function<TaskItem(const json&)>& make,
                Task& t) {
  for (size_t i = 0; i < f.lines.size(); ++i) {
    if (limit > 0 && static_cast<int64_t>(t.items.size()) >= limit) return;
    // Parsed with nesting bounded (an IoError naming the file and line when malformed).
    const json j = io::parse_json(f.lines[i], fmt::format("{}:{}", f.path.string(), i + 1), false);
    try {
      TaskItem it = make(j);
      it.index = static_cast<int64_t>(t.items.size());
      t.items.push_back(std::move(it));
    } catch (const std::exception& e) {
      f.fail(i + 1, e.what());
    }
  }
}

void read_hellaswag(const Lines& f, int64_t limit, Task& t) {
  if (f.lines.size() % 6 != 0) f.fail(f.lines.size(), "not 6 lines per item");
  for (size_t i = 0; i + 6 <= f.lines.size(); i += 6) {
    if (limit > 0 && static_cast<int64_t>(t.items.size()) >= limit) return;
    const std::string& g = f.lines[i + 1];
    if (g.size() != 1 || g[0] < '0' || g[0] > '3') f.fail(i + 2, "the gold ending is 0-3");
    std::vector<std::string> endings;
    for (size_t e = 0; e < 6; ++e) {
      int64_t bad = -1;
      (void)io::unicode::decode_utf8(f.lines[i + e], &bad);
      if (bad >= 0) f.fail(i + e + 1, fmt::format("invalid UTF-8 at byte {}", bad));
    }
    for (size_t e = 2; e < 6; ++e) endings.push_back(hellaswag_clean(f.lines[i + e]));
    try {
      TaskItem it =
          shared_context(hellaswag_capitalize(hellaswag_clean(f.lines[i])), endings, g[0] - '0');
      it.index = static_cast<int64_t>(t.items.size());
      t.items.push_back(std::move(it));
    } catch (const std::exception& e) {
      f.fail(i + 1, e.what());
    }
  }
}

}  // namespace

const std::vector<std::string>& builtin_tasks() {
  static const std::vector<std::string> names = {"arc_easy",   "arc_challenge", "hellaswag", "piqa",
                                                 "winogrande", "boolq",         "openbookqa"};
  return names;
}

std::vector<std::string> parse_task_list(const std::string& list, const fs::path& dir,
                                         const char* option) {
  std::vector<std::string> out;
  std::stringstream in(list);
  for (std::string name; std::getline(in, name, ',');) {
    const auto& b = builtin_tasks();
    std::error_code ec;
    if (std::find(b.begin(), b.end(), name) == b.end() &&
        (name.empty() || name.find('/') != std::string::npos ||
         !fs::is_regular_file(dir / (name + ".jsonl"), ec)))
      throw ConfigError(
          fmt::format("{}: unknown task '{}' (built in: {}; a task of your own: {} with one "
                      "{{\"context\", \"choices\": [...], \"answer\": index}} per line)",
                      option, name, fmt::join(b, ", "), (dir / (name + ".jsonl")).string()));
    if (std::find(out.begin(), out.end(), name) != out.end())
      throw ConfigError(fmt::format("{}: task '{}' given twice", option, name));
    // Names become metric keys and summary columns (<name>_acc): plain, and not MMLU's.
    if (name == "mmlu" ||
        name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                               "0123456789_-") != std::string::npos)
      throw ConfigError(fmt::format(
          "{}: task name '{}': letters, digits, _ and - only, and not mmlu", option, name));
    out.push_back(name);
  }
  if (out.empty()) throw ConfigError(fmt::format("{}: no task named", option));
  return out;
}

std::vector<fs::path> task_files(const std::string& name, const fs::path& dir) {
  static const std::map<std::string, std::vector<const char*>> files = {
      {"arc_easy", {"arc_easy/ARC-Easy-Test.jsonl"}},
      {"arc_challenge", {"arc_challenge/ARC-Challenge-Test.jsonl"}},
      {"hellaswag", {"hellaswag/hellaswag_val_full.txt"}},
      {"piqa", {"piqa/valid.jsonl", "piqa/valid-labels.lst"}},
      {"winogrande", {"winogrande/dev.jsonl"}},
      {"boolq", {"boolq/dev.jsonl"}},
      {"openbookqa", {"openbookqa/test.jsonl"}}};
  const auto it = files.find(name);
  if (it == files.end()) return {dir / (name + ".jsonl")};
  std::vector<fs::path> out;
  for (const char* rel : it->second) out.push_back(dir / rel);
  return out;
}

Task load_task(const std::string& name, const fs::path& dir, int64_t limit) {
  Task t;
  t.name = name;
  t.has_norm = name != "winogrande" && name != "boolq";
  const std::vector<fs::path> files = task_files(name, dir);
  t.path = files.front();
  const auto jsonl = [&](const std::function<TaskItem(const json&)>& make) {
    read_jsonl(Lines(t.path), limit, make, t);
  };
  if (name == "arc_easy" || name == "arc_challenge")
    jsonl([](const json& j) { return arc_item(j, true); });
  else if (name == "openbookqa")
    jsonl([](const json& j) { return arc_item(j, false); });
  else if (name == "winogrande")
    jsonl(winogrande_item);
  else if (name == "boolq")
    jsonl(boolq_item);
  else if (name == "hellaswag")
    read_hellaswag(Lines(t.path), limit, t);
  else if (name == "piqa") {
    jsonl([&](const json& j) {
      return shared_context(
          "Question: " + str(j, "goal") + "\nAnswer:", {str(j, "sol1"), str(j, "sol2")}, 0);
    });
    const std::vector<int> gold =
        piqa_labels(files[1], t.items.size(), limit == 0 || int64_t(t.items.size()) < limit);
    for (size_t i = 0; i < t.items.size(); ++i) t.items[i].gold = gold[i];
  } else {
    jsonl(generic_item);
  }
  if (t.items.empty()) throw ConfigError(fmt::format("{}: no items", t.path.string()));
  t.sha256 = sha256_path(files.front());
  for (size_t i = 1; i < files.size(); ++i) t.sha256 = sha256_hex(t.sha256 + sha256_path(files[i]));
  return t;
}

}  // namespace kldq::eval
