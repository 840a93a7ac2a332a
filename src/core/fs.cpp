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

fs::path output_path(const fs::path& path, const char* option) {
  fs::path p = fs::absolute(path).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "dir/" -> "dir"
  if (p.filename().empty() || p.filename() == "." || p.filename() == ".." || p == p.root_path())
    throw ConfigError(
        fmt::format("{}: '{}' does not name a file or directory", option, path.string()));
  return p;
}

}  // namespace kldq
