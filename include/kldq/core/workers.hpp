// Worker threads: work(w) for w in [0, n) on n threads, and a split of n items into contiguous
// ranges, one per worker. Exceptions from any worker reach the caller (the first one, after all
// have ended).
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

namespace kldq {

// Threads a CPU-bound loop may use: libtorch's intra-op thread count (set by --threads).
int cpu_workers();

// work(w) for w in [0, n): in this thread when n is 1, else one thread each; the first exception
// is rethrown once all have ended (the others stop where their work checks for it, if at all).
template <class Work>
void run_workers(size_t n, Work&& work) {
  if (n <= 1) {
    if (n == 1) work(0);
    return;
  }
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  try {
    for (size_t w = 0; w < n; ++w)
      threads.emplace_back([&, w] {
        try {
          work(w);
        } catch (...) {
          errors[w] = std::current_exception();
        }
      });
  } catch (...) {  // no thread could be started (EAGAIN): end the started ones first
    for (std::thread& t : threads) t.join();
    throw;
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

// fn(begin, end) over `workers` contiguous ranges covering [0, items) (fewer when items are few),
// in item order within each range.
template <class Fn>
void for_ranges(size_t items, size_t workers, Fn&& fn) {
  const size_t n = std::max<size_t>(1, std::min(workers, items));
  run_workers(n, [&](size_t w) { fn(items * w / n, items * (w + 1) / n); });
}

}  // namespace kldq
