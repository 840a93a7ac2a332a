// JSON file reading and atomic text writing.
#include "kldq/io/json_util.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/output.hpp"

namespace kldq::io {

nlohmann::json parse_json(std::string_view text, const std::string& where, bool config) {
  auto fail = [&](const std::string& msg) -> nlohmann::json {
    if (config) throw ConfigError(msg);
    throw IoError(msg);
  };
  // No document kldq reads nests deeper than a few levels (a tokenizer's Sequence of Splits is
  // 4); a bound keeps hostile nesting away from every recursive walk of the tree.
  constexpr int kMaxDepth = 128;
  bool too_deep = false;
  const auto depth_guard = [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    too_deep |= depth > kMaxDepth;
    return !too_deep;
  };
  try {
    nlohmann::json j = nlohmann::json::parse(text, depth_guard);
    if (too_deep)
      return fail(fmt::format("{}: JSON nested deeper than {} levels", where, kMaxDepth));
    return j;
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for 1e309
    return fail(fmt::format("{}: invalid JSON ({})", where, e.what()));
  }
}

nlohmann::json read_json_file(const std::filesystem::path& path, bool config) {
  return parse_json(read_input_file(path, kMaxDocumentBytes, config), path.string(), config);
}

void for_each_jsonl_row(std::string text, const std::string& source, bool config,
                        const std::function<void(const nlohmann::json&, const std::string&)>& row) {
  std::istringstream in(std::move(text));  // a data file may be 1 GiB: moved, not copied
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", source, n);
    row(parse_json(line, where, config), where);
  }
}

void write_file_atomic(const std::filesystem::path& path, const std::string& text) {
  TempOutput tmp(path, TempOutput::Kind::FILE);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(tmp.fd(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw IoError(fmt::format("{}: write failed ({})", path.string(), std::strerror(errno)));
    done += size_t(n);
  }
  tmp.commit();
}

std::vector<ShardFile> read_shard_files(const std::vector<std::string>& paths) {
  std::vector<ShardFile> shards;
  for (const std::string& path : paths) shards.push_back({path, read_json_file(path, true)});
  return shards;
}

}  // namespace kldq::io
