// stderr logger, so that results on stdout stay machine-readable.
#include "kldq/core/log.hpp"

#include <unistd.h>

#include <atomic>
#include <string>

namespace kldq::log {
namespace {
std::atomic<Level> g_level{Level::NORMAL};
}  // namespace

void init(Level level) {
  g_level = level;
}

bool enabled(Level level) {
  return static_cast<int>(g_level.load()) >= static_cast<int>(level);
}

void write(std::string_view tag, std::string_view message) {
  std::string line = fmt::format("kldq {}: {}\n", tag, message);
  // One write(2) per line: concurrent writers never interleave within a line.
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
}

}  // namespace kldq::log
