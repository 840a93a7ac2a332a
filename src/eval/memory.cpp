// Memory report: per-layer exact bytes from QLinear, totals by format.
#include "kldq/eval/memory.hpp"

namespace kldq::eval {

MemoryReport memory_report(const model::Decoder& m) {
  MemoryReport r;
  uint64_t params = 0;
  for (const auto id : m.linear_ids()) {
    const model::QLinear& l = m.linear(id);
    // Weight bytes only: biases and input scales are counted with the other tensors, as
    // inspect does.
    const uint64_t bytes = l.weight_bytes();
    const uint64_t n = static_cast<uint64_t>(l.in_features() * l.out_features());
    r.weight_bytes_by_format[l.format_name()] += bytes;
    r.weight_bytes_linear += bytes, params += n;
    r.layers.push_back({id.name(), l.format_name(), bytes, 8.0 * double(bytes) / double(n)});
  }
  r.weight_bytes = m.weight_bytes();
  r.weight_bytes_by_format["other"] = r.weight_bytes - r.weight_bytes_linear;
  r.bits_per_weight = params ? 8.0 * double(r.weight_bytes_linear) / double(params) : 0.0;
  return r;
}

}  // namespace kldq::eval
