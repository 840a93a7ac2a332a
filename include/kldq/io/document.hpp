// The one reader of typed documents (config.json, tokenizer.json, plans, profiles, recorded
// settings; experiment files are YAML read through the same error format): a JSON node with the
// file and key path that reached it, so every error reads `file: a.b[2]: expected ..., got ...`.
// A document is user configuration (ConfigError, exit 2) or data (IoError, exit 1).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kldq::io {

enum class DocKind { CONFIG, DATA };

// `file: path: what` (`file: what` for the document as a whole); every reader's error format.
std::string doc_message(std::string_view file, std::string_view path, std::string_view what);
// A text from a document as errors show it: at most 60 bytes (longer: its first 57, cut at a
// UTF-8 character boundary, and "..."), so a hostile document cannot make a message of megabytes.
std::string shown_text(std::string_view text);

class Doc {
 public:
  Doc(const nlohmann::json& j, std::string file, DocKind kind, std::string path = "")
      : j_(&j), file_(std::move(file)), path_(std::move(path)), kind_(kind) {}
  // A Doc points into its document: never onto a temporary.
  Doc(nlohmann::json&&, std::string, DocKind, std::string = "") = delete;

  // Throws ConfigError or IoError (the document's kind) with `file: path: what`.
  [[noreturn]] void fail(std::string_view what) const;

  const nlohmann::json& json() const { return *j_; }
  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }
  // `file: path` (`file` at the root), for parsers that take a "what" (vocabularies, formats).
  std::string where() const;

  bool is_null() const { return j_->is_null(); }
  // The value as errors show it: a scalar as written (at most 60 characters), a list or an
  // object by its type, so a hostile document cannot make a message of megabytes.
  std::string shown() const;
  // An object holding `key` with a value that is not null.
  bool has(const std::string& key) const;
  // An object holding `key`, null or not (records whose keys must not be null when present).
  bool contains(const std::string& key) const;
  // The member `key` (error "missing" when absent; "expected an object" when not an object).
  Doc operator[](const std::string& key) const;
  // Element `i` of an array.
  Doc operator[](size_t i) const;
  // The number of elements of an array (error when not an array).
  size_t size() const;
  // Every key of an object is in `allowed` (error names the unknown key).
  void keys(std::initializer_list<const char*> allowed) const;
  void require_object() const;

  std::string str() const;
  std::vector<std::string> strings() const;  // a list of strings
  bool boolean() const;
  int64_t integer() const;                        // any int64
  int64_t integer(int64_t lo, int64_t hi) const;  // in [lo, hi]
  uint64_t unsigned_integer() const;              // any integer >= 0, up to 2^64 - 1
  double number(double lo, double hi) const;      // finite and in [lo, hi]
  double finite() const;                          // any finite number

  // Optional members (absent or null gives the default).
  std::string str_or(const std::string& key, const std::string& dflt) const {
    return has(key) ? (*this)[key].str() : dflt;
  }
  bool bool_or(const std::string& key, bool dflt) const {
    return has(key) ? (*this)[key].boolean() : dflt;
  }
  // `out` = read(member `key`) when the member holds a value that is not null, else unset: the
  // optional keys of typed records (written with put_optional).
  template <class T, class Read>
  void optional(const std::string& key, std::optional<T>& out, Read&& read) const {
    if (has(key)) out = read((*this)[key]);
  }

 private:
  std::string child_path(std::string_view key) const;
  const nlohmann::json* j_;
  std::string file_;
  std::string path_;
  DocKind kind_;
};

// Writes an optional key of a typed record when it is set (read back with Doc::optional).
template <class T>
void put_optional(nlohmann::json& j, const char* key, const std::optional<T>& v) {
  if (v) j[key] = *v;
}

}  // namespace kldq::io
