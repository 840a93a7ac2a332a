// Logging to stderr: leveled, formatted with fmt, configured once by the CLI from -v/-q.
// Hand-written rather than spdlog: the spdlog builds on Debian 12 (1.10) and on the GPU machine
// (1.12) are compiled against an older fmt than the fmt 12 headers that libtorch's include
// directory puts first on the include path, and the two cannot be mixed in one binary.
#pragma once

#include <fmt/format.h>

#include <string_view>
#include <utility>

namespace kldq::log {

enum class Level { QUIET, NORMAL, VERBOSE };

// Sets the verbosity (default NORMAL): QUIET keeps warnings and errors only.
void init(Level level);
bool enabled(Level level);
// Writes "[tag] message\n" to stderr in one call (lines from threads do not interleave).
void write(std::string_view tag, std::string_view message);

template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::NORMAL)) write("info", fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::VERBOSE)) write("debug", fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  write("warning", fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  write("error", fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace kldq::log
