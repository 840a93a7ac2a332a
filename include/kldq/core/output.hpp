// Output rules (docs/ARCHITECTURE.md, "Outputs"): what `-o` may name and what `--force` may
// replace, checked before any work; and temporaries that cannot destroy anything but themselves.
//
// A temporary is created beside its destination (so the final rename is atomic) under an
// unpredictable name `.<name>.kldq-tmp-XXXXXX`, exclusively (a file: made unnamed with
// O_TMPFILE, marked and locked before it is linked under that name; a directory: mkdtemp), and is
// locked (flock) for as long as this process holds it. A directory temporary holds the marker file
// `.kldq-output`, which is also its lock and stays in the finished output: it is how `--force`
// recognises a directory kldq wrote. Temporaries are removed by their owner's destructor, by the
// signal handler on SIGINT/SIGTERM/SIGHUP, and (after a SIGKILL) by a later kldq that finds one
// carrying kldq's marker with its lock free: the marker file of a directory, the extended
// attribute `user.kldq.temporary` of a file. Nothing is ever removed by its name alone.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace kldq {

// The marker file in every directory kldq writes as an output (checkpoints of quantize/synth).
inline constexpr const char* kOutputMarker = ".kldq-output";

// `arg` as an absolute output file path, checked before work starts: ConfigError naming
// `option` when it is an existing directory (or not a regular file), when it is one of `inputs`
// or contains one, or when it would replace a file inside an input directory; IoError when its
// directory is missing or not writable.
std::filesystem::path file_output(const std::filesystem::path& arg, const char* option,
                                  const std::vector<std::filesystem::path>& inputs);

// `arg` as an absolute output directory for a command that writes a whole directory (a
// checkpoint). Besides file_output's rules on inputs: an existing non-empty directory needs
// `force`, and `force` replaces only a directory kldq wrote (one holding kOutputMarker). Removes
// stale temporaries of the same name left by a killed kldq.
std::filesystem::path directory_output(const std::filesystem::path& arg, const char* option,
                                       bool force,
                                       const std::vector<std::filesystem::path>& inputs);

// ConfigError naming `option` when `dir` (a directory kldq writes new files into, never replaces)
// is one of `inputs` or contains one.
void check_not_input(const std::filesystem::path& dir, const char* option,
                     const std::vector<std::filesystem::path>& inputs);

// A temporary file or directory for `dst` (see the top of this file). Removed when the object
// goes away without commit().
class TempOutput {
 public:
  enum class Kind { FILE, DIRECTORY };
  TempOutput(const std::filesystem::path& dst, Kind kind);
  ~TempOutput();
  TempOutput(const TempOutput&) = delete;
  TempOutput& operator=(const TempOutput&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // The open, locked descriptor of a FILE temporary (-1 for a directory). Writers write through
  // it (fdopen(dup(fd)) or write(2)); it stays open until commit or destruction.
  int fd() const { return kind_ == Kind::FILE ? fd_ : -1; }
  // Renames the temporary to the destination. A FILE never replaces a directory; a DIRECTORY
  // replaces only a directory holding kOutputMarker. IoError naming the destination otherwise
  // (the temporary is then removed).
  void commit();

 private:
  std::filesystem::path dst_, path_;
  Kind kind_;
  int fd_ = -1;  // the temporary file, or the directory's marker
  bool done_ = false;
};

// Removes temporaries under `root` (at any depth when `recursive`) that a killed kldq left: named
// like a temporary, carrying the marker, and with the lock free. Returns how many it removed.
int remove_stale_temporaries(const std::filesystem::path& root, bool recursive);

// Starts the thread that, on SIGINT, SIGTERM or SIGHUP, removes this process's temporaries and
// then ends the process by that signal. Call first in main, before any other thread exists (it
// blocks those signals in the calling thread, and threads inherit the mask).
void install_cleanup_on_signals();

// std::system for a process that blocked those signals: runs `/bin/sh -c command` with an empty
// signal mask, so the child still ends on Ctrl-C. Returns its exit status (-1 when it could not
// be started, 128 + N when signal N ended it).
int run_shell(const std::string& command);

}  // namespace kldq
