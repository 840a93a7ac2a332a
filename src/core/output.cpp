// Output rules checked before work, exclusive locked temporaries, and their removal on signals
// (the design is at the top of kldq/core/output.hpp).
#include "kldq/core/output.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <mutex>
#include <thread>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"

namespace kldq {
namespace fs = std::filesystem;
namespace {

constexpr const char* kTempInfix = ".kldq-tmp-";
// The marker of a file temporary: an extended attribute (where the file system has them; a file
// without it is never removed by another process).
constexpr const char* kTempAttr = "user.kldq.temporary";

// Temporaries this process holds, for the signal thread. The mutex also orders a commit's
// rename against the signal thread's removal: a path is either renamed or removed, never both.
// Never destroyed: the detached signal thread may use them while the process exits.
std::mutex& registry_mutex() {
  static auto* m = new std::mutex;
  return *m;
}
std::list<std::string>& registry() {
  static auto* r = new std::list<std::string>;
  return *r;
}

void unregister(const fs::path& p) {
  auto& reg = registry();
  for (auto it = reg.begin(); it != reg.end(); ++it)
    if (*it == p.native()) {
      reg.erase(it);
      return;
    }
}

fs::path resolved(const fs::path& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? fs::absolute(p).lexically_normal() : r;
}

// True when `inner` is `outer` or lies below it (both resolved).
bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o) {
    if (o->empty()) continue;  // a trailing separator
    if (i == inner.end() || *i != *o) return false;
    ++i;
  }
  return true;
}

bool same_file(const fs::path& a, const fs::path& b) {
  struct stat sa {
  }, sb{};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// ConfigError when writing `out` could change an input: it is one, contains one, or (when it
// exists) lies inside an input directory, where replacing it replaces part of that input.
void check_inputs(const fs::path& out, const char* option, const std::vector<fs::path>& inputs,
                  bool out_exists) {
  const fs::path ro = resolved(out);
  for (const auto& in : inputs) {
    if (in.empty()) continue;
    const fs::path ri = resolved(in);
    std::string why;
    if (same_file(out, in) || ro == ri)
      why = "is an input of this command";
    else if (within(ri, ro))
      why = fmt::format("contains an input of this command ({})", in.string());
    else if (out_exists && fs::is_directory(ri) && within(ro, ri))
      why = fmt::format("exists inside the input {}; writing it would change that input",
                        in.string());
    if (!why.empty())
      throw ConfigError(
          fmt::format("{} {}: {}; choose another output path", option, out.string(), why));
  }
}

void check_parent_writable(const fs::path& out, const char* option) {
  const fs::path dir = out.parent_path();
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw IoError(fmt::format("{} {}: no directory {}", option, out.string(), dir.string()));
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw IoError(fmt::format("{} {}: cannot write in {} ({})", option, out.string(), dir.string(),
                              std::strerror(errno)));
}

bool has_marker(const fs::path& dir) {
  struct stat st {};
  return ::lstat((dir / kOutputMarker).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_empty_directory(const fs::path& dir) {
  std::error_code ec;
  return fs::is_empty(dir, ec) && !ec;
}

mode_t default_mode(mode_t full) {
  static const mode_t mask = [] {
    const mode_t m = ::umask(022);
    ::umask(m);
    return m;
  }();
  return full & ~mask;
}

// The marker of a directory temporary, created under another name, locked, then renamed, so no
// other process ever sees the marker unlocked while this one is alive. Returns its descriptor.
int create_marker(const fs::path& dir) {
  const fs::path tmp = dir / ".kldq-output.new", marker = dir / kOutputMarker;
  const std::string text = fmt::format("{{\"written_by\": \"kldq\", \"pid\": {}}}\n", ::getpid());
  const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, default_mode(0666));
  if (fd < 0 || ::flock(fd, LOCK_EX) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  if (::write(fd, text.data(), text.size()) != ssize_t(text.size()) ||
      ::rename(tmp.c_str(), marker.c_str()) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

fs::path file_output(const fs::path& arg, const char* option, const std::vector<fs::path>& inputs) {
  const fs::path out = output_path(arg, option);
  struct stat st {};
  const bool exists = ::stat(out.c_str(), &st) == 0;
  if (exists && S_ISDIR(st.st_mode))
    throw ConfigError(fmt::format("{} {}: is a directory; give a file name", option, out.string()));
  if (exists && !S_ISREG(st.st_mode))
    throw ConfigError(fmt::format("{} {}: exists and is not a regular file", option, out.string()));
  check_inputs(out, option, inputs, exists);
  check_parent_writable(out, option);
  return out;
}

fs::path directory_output(const fs::path& arg, const char* option, bool force,
                          const std::vector<fs::path>& inputs) {
  const fs::path out = output_path(arg, option);
  struct stat st {};
  const bool exists = ::lstat(out.c_str(), &st) == 0;
  check_inputs(out, option, inputs, exists);
  if (exists && !S_ISDIR(st.st_mode))
    throw ConfigError(fmt::format("{} {}: exists and is not a directory", option, out.string()));
  if (exists && !is_empty_directory(out)) {
    if (!force)
      throw ConfigError(
          fmt::format("{} {}: already exists (pass --force to replace it)", option, out.string()));
    if (!has_marker(out))
      throw ConfigError(fmt::format(
          "{} {}: refusing to replace it: kldq did not write it (no {}); --force replaces only "
          "kldq's own outputs",
          option, out.string(), kOutputMarker));
  }
  check_parent_writable(out, option);
  remove_stale_temporaries(out.parent_path(), false);
  return out;
}

void check_not_input(const fs::path& dir, const char* option, const std::vector<fs::path>& inputs) {
  check_inputs(output_path(dir, option), option, inputs, /*out_exists=*/false);
}

namespace {

// A new temporary file named `name` (its last six characters, XXXXXX, are replaced), marked and
// locked: -1 and errno on failure. The file gets its name only once it carries the marker and
// the lock: it is made unnamed in `dir` (O_TMPFILE), marked, locked and then linked in, so a
// SIGKILL at any moment leaves either nothing or a temporary a later kldq removes. Where the
// file system has no O_TMPFILE (or /proc is absent), mkostemp, where a kill in the few calls
// before the marker leaves an unmarked temporary that nothing removes (as a user's file).
int create_marked_file(const fs::path& dir, std::string& name) {
  const auto mark = [](int fd) {
    ::fchmod(fd, default_mode(0666));
    ::flock(fd, LOCK_EX);
    ::fsetxattr(fd, kTempAttr, "1", 1, 0);  // where supported (see the header)
  };
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) {
    mark(fd);
    const std::string self = "/proc/self/fd/" + std::to_string(fd);
    static constexpr char kChars[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    for (int attempt = 0; attempt < 100; ++attempt) {
      unsigned char r[6] = {};
      if (::getrandom(r, sizeof r, 0) != ssize_t(sizeof r)) {
        errno = ENOSYS;  // no random names this way: mkostemp's below
        break;
      }
      for (size_t i = 0; i < 6; ++i) name[name.size() - 6 + i] = kChars[r[i] % 62];
      if (::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0)
        return fd;
      if (errno != EEXIST) break;
    }
    const int err = errno;
    ::close(fd);
    std::fill(name.end() - 6, name.end(), 'X');
    if (err != ENOENT && err != EPERM && err != ENOSYS) {  // else: this way is not available
      errno = err;
      return -1;
    }
  }
  const int m = ::mkostemp(name.data(), O_CLOEXEC);
  if (m >= 0) mark(m);
  return m;
}

}  // namespace

TempOutput::TempOutput(const fs::path& dst, Kind kind) : dst_(dst), kind_(kind) {
  std::string templ =
      (dst.parent_path() / ("." + dst.filename().string() + kTempInfix + "XXXXXX")).string();
  const auto fail = [&](const char* what) {
    throw IoError(
        fmt::format("{}: cannot create {} ({})", dst.string(), what, std::strerror(errno)));
  };
  path_ = templ;  // allocated before anything exists on disk, so nothing below throws after
  std::lock_guard<std::mutex> lock(registry_mutex());
  // Registered before it exists (the entry's allocation cannot fail after creation); mkstemp
  // fills in the random part of the entry's own text.
  auto& reg = registry();
  const auto slot = reg.insert(reg.end(), templ);
  std::string& name = *slot;
  if (kind == Kind::FILE) {
    fd_ = create_marked_file(dst.parent_path(), name);
    if (fd_ < 0) {
      reg.erase(slot);
      fail("a temporary file");
    }
  } else {
    if (!::mkdtemp(name.data())) {
      reg.erase(slot);
      fail("a temporary directory");
    }
    ::chmod(name.c_str(), default_mode(0777));
    fd_ = create_marker(name);
    if (fd_ < 0) {
      const int err = errno;
      remove_tree(name);
      reg.erase(slot);
      errno = err;
      fail("the output marker");
    }
  }
  path_ = name;  // same length: no allocation
}

TempOutput::~TempOutput() {
  if (done_) return;
  std::lock_guard<std::mutex> lock(registry_mutex());
  remove_tree(path_);
  unregister(path_);
  if (fd_ >= 0) ::close(fd_);
}

void TempOutput::commit() {
  std::unique_lock<std::mutex> lock(registry_mutex());
  auto fail = [&](const std::string& why) {
    remove_tree(path_);
    unregister(path_);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    done_ = true;
    throw IoError(fmt::format("{}: {}", dst_.string(), why));
  };
  struct stat st {};
  const bool exists = ::lstat(dst_.c_str(), &st) == 0;
  fs::path aside;  // the replaced directory, moved out of the way until the new one is in place
  if (kind_ == Kind::FILE && exists && S_ISDIR(st.st_mode))
    fail("is a directory; not replaced by a file");
  if (kind_ == Kind::DIRECTORY && exists) {
    if (!S_ISDIR(st.st_mode)) fail("exists and is not a directory; not replaced");
    if (!is_empty_directory(dst_)) {
      if (!has_marker(dst_))
        fail(fmt::format("not written by kldq (no {}); not replaced", kOutputMarker));
      std::string t =
          (dst_.parent_path() / ("." + dst_.filename().string() + ".kldq-old-XXXXXX")).string();
      if (!::mkdtemp(t.data()))
        fail(fmt::format("cannot move the existing directory aside ({})", std::strerror(errno)));
      if (::rename(dst_.c_str(), t.c_str()) != 0) {  // onto the empty directory mkdtemp made
        const int err = errno;
        ::rmdir(t.c_str());
        fail(fmt::format("cannot move the existing directory aside ({})", std::strerror(err)));
      }
      aside = t;
    }
  }
  if (::rename(path_.c_str(), dst_.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    if (!aside.empty()) ::rename(aside.c_str(), dst_.c_str());  // put the old one back
    fail(fmt::format("cannot rename the new output into place ({})", why));
  }
  if (kind_ == Kind::FILE) ::fremovexattr(fd_, kTempAttr);  // it is an output now
  unregister(path_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  done_ = true;
  // Still under the lock: a signal now waits until the old directory is gone, never leaving it
  // half removed under a hidden name.
  if (!aside.empty()) remove_tree(aside);
}

int remove_stale_temporaries(const fs::path& root, bool recursive) {
  int removed = 0;
  auto consider = [&](const fs::directory_entry& e) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] != '.' || name.find(kTempInfix) == std::string::npos) return false;
    struct stat st {};
    if (::lstat(e.path().c_str(), &st) != 0) return false;
    int fd = -1;
    if (S_ISDIR(st.st_mode)) {
      fd = ::open((e.path() / kOutputMarker).c_str(),
                  O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    } else if (S_ISREG(st.st_mode)) {
      char v = 0;
      fd = ::open(e.path().c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
      if (fd >= 0 && ::fgetxattr(fd, kTempAttr, &v, 1) != 1) {
        ::close(fd);
        fd = -1;
      }
    }
    if (fd < 0) return false;
    const bool stale = ::flock(fd, LOCK_EX | LOCK_NB) == 0;  // the owner would hold it
    if (stale && remove_tree(e.path())) ++removed;
    ::close(fd);
    return stale;
  };
  std::error_code ec;
  if (!recursive) {
    for (auto it = fs::directory_iterator(root, ec); !ec && it != fs::end(it); it.increment(ec))
      consider(*it);
    return removed;
  }
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
       it.increment(ec))
    if (consider(*it)) it.disable_recursion_pending();
  return removed;
}

int run_shell(const std::string& command) {
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  const char* argv[] = {"sh", "-c", command.c_str(), nullptr};
  pid_t pid = 0;
  const int rc =
      posix_spawn(&pid, "/bin/sh", nullptr, &attr, const_cast<char* const*>(argv), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void install_cleanup_on_signals() {
  static sigset_t set;
  sigemptyset(&set);
  // A signal the parent ignores (nohup's SIGHUP, SIGINT of a background job) stays ignored:
  // Linux would queue it for sigwait even so.
  for (int s : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    if (::sigaction(s, nullptr, &old) == 0 && old.sa_handler != SIG_IGN) sigaddset(&set, s);
  }
  if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return;
  std::thread([] {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) return;
    {
      std::lock_guard<std::mutex> lock(registry_mutex());
      for (const auto& p : registry())
        // The main thread may still be writing into a directory while it is removed: retry.
        for (int attempt = 0; attempt < 3 && !remove_tree(p); ++attempt) {
        }
      // End the process by the same signal, so the shell sees what happened (status 128 + sig).
      ::signal(sig, SIG_DFL);
      pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      ::raise(sig);
    }
  }).detach();
}

}  // namespace kldq
