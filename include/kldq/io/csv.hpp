// CSV reading and field writing (RFC 4180: comma-separated, fields optionally in double quotes, ""
// for a quote, quoted fields may span lines; CRLF or LF line ends; a UTF-8 byte-order mark is
// skipped). Hand-written (about 60 lines) because no CSV library is among the project's
// dependencies or installed on the GPU machine, which has no network.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kldq::io {

struct CsvRow {
  int64_t line = 0;  // 1-based line where the row starts (for error messages)
  std::vector<std::string> fields;
};

// All rows of `text` (blank lines skipped). IoError naming `name` and the line of an unterminated
// quoted field.
std::vector<CsvRow> parse_csv(const std::string& text, const std::string& name);
// parse_csv of a file's contents; IoError naming the file when it cannot be read.
std::vector<CsvRow> read_csv(const std::filesystem::path& path);

// One field for writing: null as empty, strings as they are and numbers as JSON writes them (the
// shortest text that reads back to the same double); quoted, with quotes doubled, when the text
// holds a comma, a quote, CR or LF.
std::string csv_field(const nlohmann::json& v);

}  // namespace kldq::io
