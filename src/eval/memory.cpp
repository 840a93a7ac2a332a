// Memory report: per-layer exact bytes from QLinear, totals by format.
#include "kldq/eval/memory.hpp"

#include <map>

namespace kldq::eval {

nlohmann::json memory_report(const model::Decoder& m) {
  std::map<std::string, uint64_t> by_format;
  uint64_t linear = 0, params = 0;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto id : m.linear_ids()) {
    const model::QLinear& l = m.linear(id);
    // Weight bytes only: biases and input scales are counted with the other tensors, as
    // inspect does.
    const uint64_t bytes = l.weight_bytes();
    const uint64_t n = static_cast<uint64_t>(l.in_features() * l.out_features());
    by_format[l.format_name()] += bytes;
    linear += bytes, params += n;
    layers.push_back({{"id", id.name()},
                      {"format", l.format_name()},
                      {"bytes", bytes},
                      {"bits_per_weight", 8.0 * double(bytes) / double(n)}});
  }
  const uint64_t total = m.weight_bytes();
  nlohmann::json formats(by_format);
  formats["other"] = total - linear;
  return {{"weight_bytes", total},
          {"weight_bytes_linear", linear},
          {"weight_bytes_by_format", formats},
          {"bits_per_weight", params ? 8.0 * double(linear) / double(params) : 0.0},
          {"layers", layers}};
}

}  // namespace kldq::eval
