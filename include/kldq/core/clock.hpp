// Wall-clock seconds for the timings kldq reports (steady clock: immune to clock changes).
#pragma once

#include <chrono>

namespace kldq {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace kldq
