// Batches: the ranges [start, start + size) that cover n items (windows, rows, questions) `batch`
// at a time, the last one shorter. The one batch loop of the code base:
//   for (const Batch b : batches(x.size(0), batch)) y.narrow(0, b.start, b.size).copy_(f(x...));
#pragma once

#include <algorithm>
#include <cstdint>

#include "kldq/core/error.hpp"

namespace kldq {

struct Batch {
  int64_t start = 0, size = 0;
};

class Batches {
 public:
  struct iterator {
    int64_t pos, n, batch;
    Batch operator*() const { return {pos, std::min(batch, n - pos)}; }
    iterator& operator++() {
      pos += batch;
      return *this;
    }
    bool operator!=(const iterator& end) const { return pos < end.pos; }
  };
  Batches(int64_t n, int64_t batch) : n_(n), batch_(batch) {
    check(batch >= 1, "batches: the batch size must be positive");
  }
  iterator begin() const { return {0, n_, batch_}; }
  iterator end() const { return {n_, n_, batch_}; }

 private:
  int64_t n_, batch_;
};

inline Batches batches(int64_t n, int64_t batch) {
  return {n, batch};
}

}  // namespace kldq
