// JSON file reading with errors that name the file, and atomic writing. Typed reads of what was
// read are io::Doc's (kldq/io/document.hpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
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
// Each line of a JSON Lines `text` that is not blank (whitespace only, so CRLF files read too),
// parsed by parse_json with where = "<source>:<line number>" and handed to row(j, where) in
// order: a malformed line is an error naming it, and row names it in its own errors.
void for_each_jsonl_row(std::string text, const std::string& source, bool config,
                        const std::function<void(const nlohmann::json&, const std::string&)>& row);

// Writes `text` to `path` through a temporary file and a rename (no partial output).
void write_file_atomic(const std::filesystem::path& path, const std::string& text);

// The JSON files of a `--merge` (shards of a profile or an evaluation), each named for messages.
std::vector<ShardFile> read_shard_files(const std::vector<std::string>& paths);

}  // namespace kldq::io
