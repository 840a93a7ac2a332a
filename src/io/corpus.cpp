// Reading evaluation corpora (docs/PROTOCOLS.md, "Perplexity").
#include "kldq/io/corpus.hpp"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"

namespace kldq::io {

std::string read_corpus(const std::filesystem::path& path) {
  std::string all = read_input_file(path, kMaxDataBytes, /*config=*/true);
  if (path.extension() != ".jsonl") return all;
  std::istringstream in(std::move(all));
  std::string text, line;
  bool first = true;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty() || line == "\r") continue;
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw IoError(fmt::format("{}:{}: invalid JSON ({})", path.string(), n, e.what()));
    }
    if (!row.is_object() || !row.contains("text") || !row["text"].is_string())
      throw IoError(
          fmt::format("{}:{}: expected an object with a string \"text\"", path.string(), n));
    if (!first) text += "\n\n";
    text += row["text"].get<std::string>();
    first = false;
  }
  return text;
}

}  // namespace kldq::io
