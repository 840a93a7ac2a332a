// The memory report of an evaluated model (docs/PROTOCOLS.md, "Memory"): exact bytes held by
// every weight, by format, and bits per weight of the decoder's linear layers.
#pragma once

#include <nlohmann/json.hpp>

#include "kldq/model/decoder.hpp"

namespace kldq::eval {

// {"weight_bytes": all weights, "weight_bytes_linear", "weight_bytes_by_format": {format: bytes,
// "other": embeddings, norms, head, biases}, "bits_per_weight": 8 x linear weight bytes (codes,
// scales, zeros) / linear parameters, "layers": [{"id", "format", "bytes", "bits_per_weight"}]}.
nlohmann::json memory_report(const model::Decoder& model);

}  // namespace kldq::eval
