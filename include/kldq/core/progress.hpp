// A progress bar with rate and ETA on stderr, drawn only when stderr is a terminal and logging is
// not quiet (so logs and CI output stay clean); redrawn at most five times a second.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

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

}  // namespace kldq
