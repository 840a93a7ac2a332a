// Typed access to a JSON document that remembers where it is, so every error about a malformed
// tokenizer.json names the file and the JSON path ("model.merges[12]").
#pragma once

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <string>

#include "kldq/core/error.hpp"

namespace kldq::io {

class JsonPath {
 public:
  JsonPath(const nlohmann::json& j, std::string file, std::string path = "")
      : j_(&j), file_(std::move(file)), path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw IoError(fmt::format("{}: {}: {}", file_, path_.empty() ? "(root)" : path_, what));
  }
  const nlohmann::json& json() const { return *j_; }
  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }
  bool has(const std::string& key) const {
    return j_->is_object() && j_->contains(key) && !(*j_)[key].is_null();
  }
  bool is_null() const { return j_->is_null(); }
  JsonPath operator[](const std::string& key) const {
    if (!j_->is_object()) fail("expected an object");
    // Checked before the lookup: nlohmann's const operator[] on a missing key is undefined
    // behaviour (an assertion in builds with assertions on; found by scripts/sanitize.sh).
    if (!j_->contains(key))
      throw IoError(fmt::format("{}: {}: missing", file_, path_.empty() ? key : path_ + "." + key));
    return child(key);
  }
  JsonPath operator[](size_t i) const {
    if (i >= size()) fail(fmt::format("no element {} (size {})", i, j_->size()));
    return JsonPath((*j_)[i], file_, fmt::format("{}[{}]", path_, i));
  }
  size_t size() const {
    if (!j_->is_array()) fail("expected an array");
    return j_->size();
  }
  std::string str() const {
    if (!j_->is_string()) fail(fmt::format("expected a string, got {}", j_->type_name()));
    return j_->get<std::string>();
  }
  bool boolean() const {
    if (!j_->is_boolean()) fail(fmt::format("expected true or false, got {}", j_->type_name()));
    return j_->get<bool>();
  }
  int64_t integer() const {
    if (!j_->is_number_integer()) fail(fmt::format("expected an integer, got {}", j_->type_name()));
    return j_->get<int64_t>();
  }
  // Optional members with defaults (null counts as absent).
  std::string str_or(const std::string& key, const std::string& dflt) const {
    return has(key) ? (*this)[key].str() : dflt;
  }
  bool bool_or(const std::string& key, bool dflt) const {
    return has(key) ? (*this)[key].boolean() : dflt;
  }

 private:
  JsonPath child(const std::string& key) const {
    return JsonPath((*j_)[key], file_, path_.empty() ? key : path_ + "." + key);
  }
  const nlohmann::json* j_;
  std::string file_;
  std::string path_;
};

}  // namespace kldq::io
