// Progress bar (one line rewritten with '\r', cleared when done) and the -v phase timer.
#include "kldq/core/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "kldq/core/device.hpp"
#include "kldq/core/log.hpp"

namespace kldq {
namespace {

std::string clock_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

}  // namespace

Progress::Progress(std::string what, int64_t total, std::string unit)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      total_(std::max<int64_t>(total, 1)),
      active_(isatty(STDERR_FILENO) != 0 && log::enabled(log::Level::NORMAL)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {
  draw(true);
}

Progress::~Progress() {
  finish();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::advance(int64_t n) {
  done_ = std::min(total_, done_ + n);
  draw(done_ == total_);
}

void Progress::finish() {
  if (!active_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  active_ = false;
}

void Progress::draw(bool force) {
  if (!active_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(200)) return;
  last_draw_ = now;
  constexpr int kWidth = 24;
  const double frac = double(done_) / double(total_);
  const int filled = static_cast<int>(frac * kWidth);
  const double t = elapsed_seconds();
  const std::string eta = done_ > 0 ? clock_text(t / double(done_) * double(total_ - done_)) : "?";
  std::fprintf(stderr, "\r\033[K%s %3d%% [%s%s] %lld/%lld %s, %s elapsed, ETA %s", what_.c_str(),
               static_cast<int>(frac * 100), std::string(filled, '#').c_str(),
               std::string(kWidth - filled, ' ').c_str(), static_cast<long long>(done_),
               static_cast<long long>(total_), unit_.c_str(), clock_text(t).c_str(), eta.c_str());
  std::fflush(stderr);
}

PhaseTimer::PhaseTimer(c10::Device device, std::vector<std::string> names)
    : device_(device),
      on_(log::enabled(log::Level::VERBOSE)),
      names_(std::move(names)),
      seconds_(names_.size(), 0.0) {}

void PhaseTimer::start() {
  if (!on_) return;
  device_synchronize(device_);
  last_ = std::chrono::steady_clock::now();
}

void PhaseTimer::lap(size_t phase) {
  if (!on_) return;
  device_synchronize(device_);
  const auto now = std::chrono::steady_clock::now();
  seconds_.at(phase) += std::chrono::duration<double>(now - last_).count();
  last_ = now;
}

void PhaseTimer::report() const {
  if (!on_) return;
  for (size_t i = 0; i < names_.size(); ++i) log::debug("{}: {:.3f} s", names_[i], seconds_[i]);
}

}  // namespace kldq
