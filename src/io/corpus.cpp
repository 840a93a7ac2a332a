// Reading evaluation corpora (docs/PROTOCOLS.md, "Perplexity").
#include "kldq/io/corpus.hpp"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::io {

std::string read_corpus(const std::filesystem::path& path) {
  std::string all = read_input_file(path, kMaxDataBytes, /*config=*/true);
  if (path.extension() != ".jsonl") return all;
  std::string text;
  bool first = true;
  for_each_jsonl_row(
      std::move(all), path.string(), false,
      [&](const nlohmann::json& row, const std::string& where) {
        if (!row.is_object() || !row.contains("text") || !row["text"].is_string())
          throw IoError(fmt::format("{}: expected an object with a string \"text\"", where));
        if (!first) text += "\n\n";
        text += row["text"].get<std::string>();
        first = false;
      });
  return text;
}

}  // namespace kldq::io
