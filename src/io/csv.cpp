// RFC 4180 CSV reader, lenient where Python's csv module is: a quote inside an unquoted field
// and text after a closing quote are kept literally.
#include "kldq/io/csv.hpp"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"

namespace kldq::io {

std::vector<CsvRow> parse_csv(const std::string& text, const std::string& name) {
  std::vector<CsvRow> rows;
  size_t i = text.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0;
  int64_t line = 1;
  CsvRow row;
  std::string field;
  bool in_quotes = false, quoted_field = false, row_has_content = false;
  int64_t quote_line = 0;
  auto end_field = [&] {
    row.fields.push_back(std::move(field));
    field.clear();
    quoted_field = false;
  };
  auto end_row = [&] {
    if (row_has_content || !row.fields.empty()) {
      end_field();
      rows.push_back(std::move(row));
    }
    row = CsvRow{};
    row.line = line + 1;
    row_has_content = false;
  };
  row.line = line;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"', ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"' && field.empty() && !quoted_field) {
      in_quotes = quoted_field = row_has_content = true;
      quote_line = line;
    } else if (c == ',') {
      end_field();
      row_has_content = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_row();
      ++line;
    } else {
      field += c;
      row_has_content = true;
    }
  }
  if (in_quotes) throw IoError(fmt::format("{}:{}: quoted field not terminated", name, quote_line));
  if (row_has_content || !row.fields.empty()) {
    end_field();
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<CsvRow> read_csv(const std::filesystem::path& path) {
  return parse_csv(read_input_file(path, kMaxDataBytes, false), path.string());
}

std::string csv_field(const nlohmann::json& v) {
  if (v.is_null()) return "";
  const std::string s = v.is_string() ? v.get<std::string>() : v.dump();
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (const char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace kldq::io
