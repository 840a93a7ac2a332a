// JSON file reading with errors that name the file and the key path (config.json, index files).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace kldq::io {

// Reads and parses a JSON file. `config` selects the error type: ConfigError (exit 2) for
// user configuration, IoError (exit 1) for data files.
nlohmann::json read_json_file(const std::filesystem::path& path, bool config = false);

// Writes `text` to `path` through a temporary file and a rename (no partial output).
void write_file_atomic(const std::filesystem::path& path, const std::string& text);

}  // namespace kldq::io
