// Shards: parsing "i/n".
#include "kldq/core/shard.hpp"

#include <fmt/format.h>

#include <charconv>

#include "kldq/core/error.hpp"

namespace kldq {
namespace {

// A whole decimal number and nothing else ("01" is accepted, "1.0", "+1" and "" are not).
bool parse_count(const std::string& s, size_t& out) {
  if (s.empty() || s.size() > 9) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

}  // namespace

std::string Shard::name() const {
  return fmt::format("{}/{}", index, count);
}

Shard parse_shard(const std::string& text, const char* option, const char* items) {
  if (text.empty()) return {};
  const auto slash = text.find('/');
  Shard s;
  if (slash == std::string::npos || !parse_count(text.substr(0, slash), s.index) ||
      !parse_count(text.substr(slash + 1), s.count) || s.count < 1 || s.index >= s.count)
    throw ConfigError(fmt::format("{} {}: expected i/n with 0 <= i < n ({} with index % n == i)",
                                  option, text, items));
  return s;
}

}  // namespace kldq
