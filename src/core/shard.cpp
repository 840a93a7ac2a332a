// Shards: parsing "i/n"; checking that shard files belong together.
#include "kldq/core/shard.hpp"

#include <fmt/format.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <map>

#include "kldq/core/error.hpp"

namespace kldq {
namespace {

// A whole decimal number and nothing else ("01" is accepted, "1.0", "+1" and "" are not).
bool parse_count(const std::string& s, size_t& out) {
  if (s.empty() || s.size() > 9) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

Shard shard_of(const ShardFile& f, const char* made_by) {
  if (!f.json.is_object() || !f.json.contains("shard") || !f.json["shard"].is_object())
    throw ConfigError(
        fmt::format("{}: not a shard (no \"shard\" key; {} writes one)", f.path, made_by));
  const Shard s{shard_field(f, "index"), shard_field(f, "count")};
  if (s.count < 1 || s.index >= s.count)
    throw ConfigError(fmt::format("{}: shard {}: expected 0 <= index < count", f.path, s.name()));
  return s;
}

std::string shown(const nlohmann::json& v) {
  std::string text = v.dump();
  return text.size() > 80 ? text.substr(0, 77) + "..." : text;
}

// "key.sub[2]: a vs b" for the first place where two values differ.
std::string difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& at) {
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items())
      if (!b.contains(k) || b[k] != v)
        return difference(v, b.value(k, nlohmann::json()), at + "." + k);
    for (const auto& [k, v] : b.items())
      if (!a.contains(k)) return difference(nlohmann::json(), v, at + "." + k);
  }
  if (a.is_array() && b.is_array() && a.size() == b.size())
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) return difference(a[i], b[i], fmt::format("{}[{}]", at, i));
  return fmt::format("{}: {} vs {}", at, shown(a), shown(b));
}

void check_agree(const ShardFile& a, const ShardFile& b, const std::set<std::string>& per_run) {
  for (const auto& [key, value] : a.json.items())
    if (!per_run.count(key) && (!b.json.contains(key) || b.json[key] != value))
      throw ConfigError(fmt::format("{} and {} disagree on {}", a.path, b.path,
                                    difference(value, b.json.value(key, nlohmann::json()), key)));
  for (const auto& [key, value] : b.json.items())
    if (!per_run.count(key) && !a.json.contains(key))
      throw ConfigError(fmt::format("{} has {} and {} does not", b.path, key, a.path));
}

// A run's own figure (seconds, bytes) in the file: 0 where absent.
double run_figure(const ShardFile& f, const char* key) {
  if (!f.json.contains(key)) return 0;
  if (!f.json[key].is_number())
    throw ConfigError(fmt::format("{}: {}: expected a number", f.path, key));
  return f.json[key].get<double>();
}

}  // namespace

size_t shard_field(const ShardFile& f, const char* key) {
  const nlohmann::json& s = f.json.at("shard");  // checked by shard_of
  if (!s.contains(key) || !s[key].is_number_unsigned())
    throw ConfigError(
        fmt::format("{}: shard.{}: expected a non-negative whole number", f.path, key));
  return s[key].get<size_t>();
}

double summed_figure(const std::vector<const ShardFile*>& shards, const char* key) {
  double sum = 0;
  for (const ShardFile* f : shards) sum += run_figure(*f, key);
  return sum;
}

MergedFigures merged_figures(const std::vector<const ShardFile*>& shards) {
  double peak_cuda = 0, peak_host = 0;
  for (const ShardFile* f : shards) {
    peak_cuda = std::max(peak_cuda, run_figure(*f, "peak_cuda_bytes"));
    peak_host = std::max(peak_host, run_figure(*f, "peak_host_bytes"));
  }
  return {summed_figure(shards, "seconds"), uint64_t(summed_figure(shards, "streamed_bytes")),
          uint64_t(peak_cuda), uint64_t(peak_host), shards.size()};
}

std::vector<const ShardFile*> check_shards(const std::vector<ShardFile>& files, const char* what,
                                           const char* made_by,
                                           const std::set<std::string>& per_run) {
  if (files.empty()) throw ConfigError(fmt::format("{}: no shard files given", what));
  const Shard first = shard_of(files[0], made_by);
  std::map<size_t, const ShardFile*> given;  // by index: a corrupt count allocates nothing
  for (const ShardFile& f : files) {
    const Shard s = shard_of(f, made_by);
    if (s.count != first.count)
      throw ConfigError(fmt::format("{} is shard {} but {} is shard {}: shards of different splits",
                                    files[0].path, first.name(), f.path, s.name()));
    if (given.count(s.index))
      throw ConfigError(
          fmt::format("{} and {} are both shard {}", given[s.index]->path, f.path, s.name()));
    given[s.index] = &f;
    check_agree(files[0], f, per_run);
  }
  if (given.size() < first.count) {
    std::vector<std::string> missing;
    for (size_t i = 0; i < first.count && missing.size() <= 16; ++i)
      if (!given.count(i)) missing.push_back(Shard{i, first.count}.name());
    throw ConfigError(fmt::format(
        "{}: shard(s) {}{} missing", what,
        fmt::join(missing.begin(), missing.begin() + std::min<size_t>(missing.size(), 16), ", "),
        missing.size() > 16 ? ", ..." : ""));
  }
  std::vector<const ShardFile*> by_index;
  for (const auto& [index, f] : given) by_index.push_back(f);
  return by_index;
}

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
