// `kldq tokenize --model DIR [--tokens|--count] [--jsonl] [--decode] [FILE|-]`: token ids of
// text with a checkpoint's tokenizer (only its tokenizer files are read), or text of ids.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "common.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"

namespace kldq::cli {
namespace {

struct TokenizeOptions {
  std::string model;
  std::string input = "-";
  bool tokens = false, count = false, jsonl = false, decode = false, no_special = false;
  bool keep_special = false;
};

std::string read_input(const std::string& path) {
  if (path != "-") return read_input_file(path, kMaxDataBytes, /*config=*/true);
  std::stringstream buf;
  buf << std::cin.rdbuf();
  return buf.str();
}

// One result for one text: ids, token strings or a count.
nlohmann::json describe(const io::Tokenizer& tok, const TokenizeOptions& o, std::string_view text) {
  const std::vector<int32_t> ids = tok.encode(text, !o.no_special);
  if (o.count) return ids.size();
  if (!o.tokens) return ids;
  nlohmann::json out = nlohmann::json::array();
  for (int32_t id : ids) out.push_back(tok.token(id));
  return out;
}

std::vector<int32_t> parse_ids(const std::string& text, const std::string& where, int64_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    throw ConfigError(fmt::format("{}: expected a JSON array of token ids", where));
  }
  if (!j.is_array())
    throw ConfigError(fmt::format("{}: expected a JSON array of token ids", where));
  std::vector<int32_t> ids;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= size)
      throw ConfigError(fmt::format("{}: [{}]: expected a token id in [0, {})", where, i, size));
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

int run_tokenize(const TokenizeOptions& o) {
  if (o.tokens && o.count) throw ConfigError("--tokens and --count exclude each other");
  const auto tok = io::Tokenizer::load(o.model);
  const std::string input = read_input(o.input);
  const std::string name = o.input == "-" ? "stdin" : o.input;
  // JSON escapes invalid UTF-8 nowhere: token strings of byte-level vocabularies are valid UTF-8,
  // decoded text is sanitised by the decoders.
  auto dump = [](const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  if (!o.jsonl) {
    if (o.decode)
      std::cout << tok->decode(parse_ids(input, name, tok->size()), !o.keep_special);
    else
      std::cout << dump(describe(*tok, o, input)) << "\n";
    return 0;
  }
  std::istringstream lines(input);
  std::string line;
  for (size_t n = 1; std::getline(lines, line); ++n) {
    if (line.empty()) continue;
    const std::string where = fmt::format("{}:{}", name, n);
    if (o.decode) {
      std::cout << dump(tok->decode(parse_ids(line, where, tok->size()), !o.keep_special)) << "\n";
      continue;
    }
    // nesting bounded as every JSON input's (a ConfigError naming the line when malformed)
    const nlohmann::json row = io::parse_json(line, where, /*config=*/true);
    if (!row.is_object() || !row.contains("text") || !row["text"].is_string())
      throw ConfigError(fmt::format("{}: expected an object with a string field \"text\"", where));
    std::cout << dump(describe(*tok, o, row["text"].get<std::string>())) << "\n";
  }
  return 0;
}

}  // namespace

void register_tokenize(CLI::App& app, Action& action) {
  auto opts = std::make_shared<TokenizeOptions>();
  auto* sub = app.add_subcommand("tokenize", "token ids of text with a checkpoint's tokenizer");
  sub->add_option("--model", opts->model, "directory with tokenizer.json or tokenizer.model")
      ->required();
  sub->add_option("INPUT", opts->input, "text file, or - for stdin (default)");
  sub->add_flag("--tokens", opts->tokens, "print token strings instead of ids");
  sub->add_flag("--count", opts->count, "print the number of tokens");
  sub->add_flag("--jsonl", opts->jsonl,
                "input lines are {\"text\": ...} objects; one result per line");
  sub->add_flag("--decode", opts->decode,
                "input is a JSON array of ids (per line with --jsonl); print text");
  sub->add_flag("--no-special", opts->no_special, "do not add BOS/EOS or template tokens");
  sub->add_flag("--keep-special", opts->keep_special,
                "with --decode: keep special tokens (skipped by default, as in tokenizers)");
  sub->callback([&action, opts] { action = [opts] { return run_tokenize(*opts); }; });
}

}  // namespace kldq::cli
