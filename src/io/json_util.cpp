// JSON file reading, atomic text writing and typed reads of configuration JSON.
#include "kldq/io/json_util.hpp"

#include <fmt/format.h>

#include <algorithm>
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

const nlohmann::json& json_member(const nlohmann::json& j, const std::string& key,
                                  const std::string& where) {
  if (!j.is_object() || !j.contains(key))
    throw ConfigError(fmt::format("{}.{}: missing", where, key));
  return j[key];
}

std::string json_string(const nlohmann::json& j, const std::string& path) {
  if (!j.is_string())
    throw ConfigError(fmt::format("{}: expected a string, got {}", path, j.dump()));
  return j.get<std::string>();
}

double json_number(const nlohmann::json& j, const std::string& path, double lo, double hi) {
  if (!j.is_number() || !(j.get<double>() >= lo && j.get<double>() <= hi))
    throw ConfigError(
        fmt::format("{}: expected a number in [{}, {}], got {}", path, lo, hi, j.dump()));
  return j.get<double>();
}

int64_t json_int(const nlohmann::json& j, const std::string& path, int64_t lo, int64_t hi) {
  const bool integer = j.is_number_integer() || j.is_number_unsigned();
  if (!integer || (j.is_number_unsigned() && j.get<uint64_t>() > uint64_t(INT64_MAX)) ||
      j.get<int64_t>() < lo || j.get<int64_t>() > hi)
    throw ConfigError(
        fmt::format("{}: expected an integer in [{}, {}], got {}", path, lo, hi, j.dump()));
  return j.get<int64_t>();
}

bool json_bool(const nlohmann::json& j, const std::string& path) {
  if (!j.is_boolean())
    throw ConfigError(fmt::format("{}: expected true or false, got {}", path, j.dump()));
  return j.get<bool>();
}

void json_keys(const nlohmann::json& j, std::initializer_list<const char*> allowed,
               const std::string& where) {
  if (!j.is_object()) throw ConfigError(fmt::format("{}: expected an object", where));
  for (const auto& [key, value] : j.items())
    if (std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; }))
      throw ConfigError(fmt::format("{}.{}: unknown key", where, key));
}

}  // namespace kldq::io
