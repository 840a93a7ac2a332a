// The memory report of an evaluated model (docs/PROTOCOLS.md, "Memory"): exact bytes held by
// every weight, by format, and bits per weight of the decoder's linear layers.
#pragma once

#include "kldq/eval/metrics.hpp"
#include "kldq/model/decoder.hpp"

namespace kldq::eval {

// All weights' bytes, the linear layers' (codes, scales, zeros) by format and per layer, and
// their bits per weight (8 x linear weight bytes / linear parameters).
MemoryReport memory_report(const model::Decoder& model);

}  // namespace kldq::eval
