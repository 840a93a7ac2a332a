// The typed document reader: lookups that track the key path, typed reads with one error format.
#include "kldq/io/document.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kldq/core/error.hpp"

namespace kldq::io {

namespace {

// Doc::shown's rendering.
std::string render(const nlohmann::json& j) {
  if (j.is_structured()) return j.type_name();
  return shown_text(j.dump());
}

}  // namespace

std::string shown_text(std::string_view text) {
  if (text.size() <= 60) return std::string(text);
  size_t n = 57;
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;  // a continuation
  return std::string(text.substr(0, n)) + "...";
}

std::string doc_message(std::string_view file, std::string_view path, std::string_view what) {
  if (path.empty()) return fmt::format("{}: {}", file, what);  // the document as a whole
  return fmt::format("{}: {}: {}", file, path, what);
}

std::string Doc::shown() const {
  return render(*j_);
}

std::string Doc::where() const {
  return path_.empty() ? file_ : fmt::format("{}: {}", file_, path_);
}

void Doc::fail(std::string_view what) const {
  const std::string msg = doc_message(file_, path_, what);
  if (kind_ == DocKind::CONFIG) throw ConfigError(msg);
  throw IoError(msg);
}

std::string Doc::child_path(std::string_view key) const {
  return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
}

bool Doc::contains(const std::string& key) const {
  return j_->is_object() && j_->contains(key);
}

bool Doc::has(const std::string& key) const {
  return contains(key) && !(*j_)[key].is_null();
}

void Doc::require_object() const {
  if (!j_->is_object()) fail(fmt::format("expected an object, got {}", j_->type_name()));
}

Doc Doc::operator[](const std::string& key) const {
  require_object();
  // Checked before the lookup: nlohmann's const operator[] on a missing key is undefined
  // behaviour (an assertion in builds with assertions on; found by scripts/sanitize.sh).
  if (!j_->contains(key)) Doc(*j_, file_, kind_, child_path(key)).fail("missing");
  return Doc((*j_)[key], file_, kind_, child_path(key));
}

Doc Doc::operator[](size_t i) const {
  if (i >= size()) fail(fmt::format("no element {} (size {})", i, j_->size()));
  return Doc((*j_)[i], file_, kind_, fmt::format("{}[{}]", path_, i));
}

size_t Doc::size() const {
  if (!j_->is_array()) fail(fmt::format("expected a list, got {}", j_->type_name()));
  return j_->size();
}

void Doc::keys(std::initializer_list<const char*> allowed) const {
  require_object();
  for (const auto& [key, value] : j_->items())
    if (std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; }))
      Doc(value, file_, kind_, child_path(key)).fail("unknown key");
}

std::string Doc::str() const {
  if (!j_->is_string()) fail(fmt::format("expected a string, got {}", shown()));
  return j_->get<std::string>();
}

std::vector<std::string> Doc::strings() const {
  std::vector<std::string> out;
  for (size_t i = 0; i < size(); ++i) out.push_back((*this)[i].str());
  return out;
}

bool Doc::boolean() const {
  if (!j_->is_boolean()) fail(fmt::format("expected true or false, got {}", shown()));
  return j_->get<bool>();
}

int64_t Doc::integer() const {
  return integer(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
}

int64_t Doc::integer(int64_t lo, int64_t hi) const {
  const bool integral = j_->is_number_integer() || j_->is_number_unsigned();
  if (!integral || (j_->is_number_unsigned() && j_->get<uint64_t>() > uint64_t(INT64_MAX)) ||
      j_->get<int64_t>() < lo || j_->get<int64_t>() > hi) {
    if (lo == std::numeric_limits<int64_t>::min() && hi == std::numeric_limits<int64_t>::max())
      fail(fmt::format("expected an integer, got {}", shown()));
    fail(fmt::format("expected an integer in [{}, {}], got {}", lo, hi, shown()));
  }
  return j_->get<int64_t>();
}

uint64_t Doc::unsigned_integer() const {
  if (!j_->is_number_unsigned() && !(j_->is_number_integer() && j_->get<int64_t>() >= 0))
    fail(fmt::format("expected an integer >= 0, got {}", shown()));
  return j_->get<uint64_t>();
}

double Doc::finite() const {
  // Parsed JSON holds no infinities or NaN; JSON built in memory may.
  if (!j_->is_number() || !std::isfinite(j_->get<double>()))
    fail(fmt::format("expected a finite number, got {}", shown()));
  return j_->get<double>();
}

double Doc::number(double lo, double hi) const {
  if (!j_->is_number() || !std::isfinite(j_->get<double>()) ||
      !(j_->get<double>() >= lo && j_->get<double>() <= hi))
    fail(fmt::format("expected a number in [{}, {}], got {}", lo, hi, shown()));
  return j_->get<double>();
}

}  // namespace kldq::io
