// JSON file reading with errors that name the file and the key path (config.json, index files),
// and typed reads of members of configuration JSON (plans, recorded settings).
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kldq/core/shard.hpp"

namespace kldq::io {

// `text` parsed as JSON, nested at most 128 levels; errors name `where`: ConfigError when
// `config`, else IoError.
nlohmann::json parse_json(std::string_view text, const std::string& where, bool config);
// Reads (core/fs read_input_file: a regular file of at most 64 MiB) and parses a JSON file.
// `config` selects the error type: ConfigError (exit 2) for user configuration, IoError (exit 1)
// for data files.
nlohmann::json read_json_file(const std::filesystem::path& path, bool config = false);

// Writes `text` to `path` through a temporary file and a rename (no partial output).
void write_file_atomic(const std::filesystem::path& path, const std::string& text);

// Typed reads of configuration JSON: ConfigError naming `path`, the key path ("plan.json.base"),
// for a missing key, a value of another type or one outside [lo, hi].
const nlohmann::json& json_member(const nlohmann::json& j, const std::string& key,
                                  const std::string& where);  // error names "where.key"
std::string json_string(const nlohmann::json& j, const std::string& path);
double json_number(const nlohmann::json& j, const std::string& path, double lo, double hi);
int64_t json_int(const nlohmann::json& j, const std::string& path, int64_t lo, int64_t hi);
bool json_bool(const nlohmann::json& j, const std::string& path);
// `j` is an object whose keys are all in `allowed`, else ConfigError naming "where.key".
void json_keys(const nlohmann::json& j, std::initializer_list<const char*> allowed,
               const std::string& where);

// The JSON files of a `--merge` (shards of a profile or an evaluation), each named for messages.
std::vector<ShardFile> read_shard_files(const std::vector<std::string>& paths);

}  // namespace kldq::io
