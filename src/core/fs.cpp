// remove_tree over POSIX nftw (depth-first, physical walk) instead of std::filesystem, and the
// normalisation of output paths (temporaries and output rules are in core/output).
#include "kldq/core/fs.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "kldq/core/error.hpp"

namespace kldq {
namespace fs = std::filesystem;
namespace {

int remove_entry(const char* path, const struct stat*, int type, struct FTW*) {
  return (type == FTW_DP ? ::rmdir(path) : ::unlink(path)) == 0 ? 0 : -1;
}

}  // namespace

bool remove_tree(const fs::path& path) noexcept {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return true;  // nothing there
  if (!S_ISDIR(st.st_mode)) return ::unlink(path.c_str()) == 0;
  // FTW_DEPTH: children before their directory; FTW_PHYS: do not follow symbolic links.
  return ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0;
}

std::string read_input_file(const fs::path& path, uint64_t max_bytes, bool config) {
  auto fail = [&](const std::string& why) -> std::string {
    const std::string msg = fmt::format("{}: {}", path.string(), why);
    if (config) throw ConfigError(msg);
    throw IoError(msg);
  };
  require_utf8_path(path, "input", config);
  // O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on the descriptor.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return fail(errno == ENOENT ? "cannot open (no such file)"
                                : fmt::format("cannot open ({})", std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(fmt::format("cannot stat ({})", std::strerror(errno)));
  if (S_ISDIR(st.st_mode)) return fail("is a directory, expected a file");
  if (!S_ISREG(st.st_mode)) return fail("not a regular file (a FIFO, socket or device)");
  if (uint64_t(st.st_size) > max_bytes)
    return fail(fmt::format("{} bytes, more than the {} MiB this kind of file may have", st.st_size,
                            max_bytes >> 20));
  std::string text(size_t(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::read(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(fmt::format("read failed ({})", std::strerror(errno)));
    if (n == 0) break;  // shrank while reading
    done += size_t(n);
  }
  text.resize(done);
  return text;
}

bool valid_utf8(std::string_view s) {
  // Shortest forms only, no surrogates, at most U+10FFFF (RFC 3629), as JSON writers require.
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    const int n = b < 0x80                 ? 0
                  : b >= 0xC2 && b <= 0xDF ? 1
                  : b >= 0xE0 && b <= 0xEF ? 2
                  : b >= 0xF0 && b <= 0xF4 ? 3
                                           : -1;
    if (n < 0 || i + size_t(n) >= s.size()) return false;  // truncated sequence
    uint32_t cp = n == 0 ? b : b & (0x3F >> n);
    for (int k = 1; k <= n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
    i += size_t(n) + 1;
  }
  return true;
}

void require_utf8_path(const fs::path& path, const char* what, bool config) {
  if (valid_utf8(path.native())) return;
  const std::string msg = fmt::format(
      "{} {}: the path is not valid UTF-8 (kldq records paths in its JSON outputs); rename it",
      what, path.string());
  if (config) throw ConfigError(msg);
  throw IoError(msg);
}

fs::path output_path(const fs::path& path, const char* option) {
  require_utf8_path(path, option, true);
  fs::path p = fs::absolute(path).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "dir/" -> "dir"
  if (p.filename().empty() || p.filename() == "." || p.filename() == ".." || p == p.root_path())
    throw ConfigError(
        fmt::format("{}: '{}' does not name a file or directory", option, path.string()));
  return p;
}

}  // namespace kldq
