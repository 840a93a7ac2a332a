// remove_tree over POSIX nftw (depth-first, physical walk) instead of std::filesystem, and the
// write-beside-then-rename helpers every writer uses for outputs without partial states.
#include "kldq/core/fs.hpp"

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

bool is_directory_no_follow(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

bool remove_tree(const fs::path& path) noexcept {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return true;  // nothing there
  if (!S_ISDIR(st.st_mode)) return ::unlink(path.c_str()) == 0;
  // FTW_DEPTH: children before their directory; FTW_PHYS: do not follow symbolic links.
  return ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0;
}

fs::path output_path(const fs::path& path, const char* option) {
  fs::path p = fs::absolute(path).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "dir/" -> "dir"
  if (p.filename().empty() || p.filename() == "." || p.filename() == ".." || p == p.root_path())
    throw ConfigError(
        fmt::format("{}: '{}' does not name a file or directory", option, path.string()));
  return p;
}

fs::path temp_sibling(const fs::path& path) {
  return path.parent_path() / fmt::format(".{}.tmp.{}", path.filename().string(), ::getpid());
}

void rename_into_place(const fs::path& tmp, const fs::path& dst) {
  auto fail = [&](const char* what) {
    const std::string reason = std::strerror(errno);
    remove_tree(tmp);
    throw IoError(fmt::format("{}: {} ({})", dst.string(), what, reason));
  };
  // rename(2) replaces files atomically, but not non-empty directories: move the old one aside.
  fs::path old;
  if (is_directory_no_follow(dst)) {
    old = temp_sibling(dst);
    old += ".old";
    remove_tree(old);
    if (::rename(dst.c_str(), old.c_str()) != 0) fail("cannot move the existing directory aside");
  }
  if (::rename(tmp.c_str(), dst.c_str()) != 0) {
    if (!old.empty()) ::rename(old.c_str(), dst.c_str());  // put the old content back
    fail("cannot rename the new output into place");
  }
  if (!old.empty()) remove_tree(old);
}

}  // namespace kldq
