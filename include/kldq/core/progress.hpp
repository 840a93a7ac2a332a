// A progress bar with rate and ETA on stderr, drawn only when stderr is a terminal and logging is
// not quiet (so logs and CI output stay clean); redrawn at most five times a second. And the
// per-phase timer behind -v's timing breakdowns.
#pragma once

#include <c10/core/Device.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace kldq {

class Progress {
 public:
  // `what`: a short label; `total`: units of work; `unit`: their name ("windows", "questions").
  Progress(std::string what, int64_t total, std::string unit);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void advance(int64_t n = 1);
  // Erases the bar (also done by the destructor).
  void finish();
  double elapsed_seconds() const;

 private:
  void draw(bool force);
  std::string what_, unit_;
  int64_t total_, done_ = 0;
  bool active_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// With -v: seconds per named phase, measured between device synchronisations (which cost a
// little overlap, so they are taken only when verbose logging is on; otherwise every call is a
// no-op).
class PhaseTimer {
 public:
  PhaseTimer(c10::Device device, std::vector<std::string> names);
  void start();
  // Adds the time since start() or the previous lap() to `phase`.
  void lap(size_t phase);
  // Logs every phase's total at debug level.
  void report() const;

 private:
  c10::Device device_;
  bool on_;
  std::vector<std::string> names_;
  std::vector<double> seconds_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace kldq
