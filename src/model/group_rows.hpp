// The members of a fused q/k/v or gate/up group as row views of the fused layer (decoder_load.cpp
// fuses groups, decoder_stream.cpp rebuilds them in a streamed block's device copy); internal to
// the model module.
#pragma once

#include <initializer_list>

#include "kldq/model/decoder.hpp"

namespace kldq::model {

// out[p] = rows of `fused` for each p of `projs` in order, each as many rows as shapes[p] has
// (`shapes` may be `out` itself: each slot is read before it is replaced).
inline void view_members(const QLinear& fused, std::initializer_list<Proj> projs,
                         const Decoder::Linears& shapes, Decoder::Linears& out) {
  int64_t row = 0;
  for (Proj p : projs) {
    const int64_t n = shapes[static_cast<int>(p)].out_features();
    out[static_cast<int>(p)] = fused.rows(row, n);
    row += n;
  }
}

}  // namespace kldq::model
