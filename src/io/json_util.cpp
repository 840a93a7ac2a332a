// JSON file reading and atomic text writing.
#include "kldq/io/json_util.hpp"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"

namespace kldq::io {

nlohmann::json read_json_file(const std::filesystem::path& path, bool config) {
  auto fail = [&](const std::string& msg) -> nlohmann::json {
    if (config) throw ConfigError(msg);
    throw IoError(msg);
  };
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return fail(fmt::format("{}: cannot open ({})", path.string(),
                            std::filesystem::exists(path) ? "permission denied" : "no such file"));
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return nlohmann::json::parse(buf.str());
  } catch (const nlohmann::json::parse_error& e) {
    return fail(fmt::format("{}: invalid JSON ({})", path.string(), e.what()));
  }
}

void write_file_atomic(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path tmp = temp_sibling(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) {
      remove_tree(tmp);
      throw IoError(fmt::format("{}: write failed", path.string()));
    }
  }
  rename_into_place(tmp, path);
}

}  // namespace kldq::io
