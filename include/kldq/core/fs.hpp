// File-system helpers: atomic replacement of outputs (write beside, then rename) and tree
// removal that does not go through std::filesystem::remove_all, since the torch wheel's
// libtorch.so exports its own copy of it, which crashes when called, and the dynamic linker may
// bind our calls to it (docs/ARCHITECTURE.md, Build).
#pragma once

#include <filesystem>

namespace kldq {

// Removes a file or a directory tree (symbolic links are removed, never followed). Returns false
// if something could not be removed; a missing path counts as removed.
bool remove_tree(const std::filesystem::path& path) noexcept;

// `path` made absolute and normal, without a trailing separator; ConfigError naming `option`
// when it has no final component (".", "/", "dir/..").
std::filesystem::path output_path(const std::filesystem::path& path, const char* option);

// A hidden temporary name beside `path` in the same directory (so rename is atomic):
// dir/.name.tmp.<pid>.
std::filesystem::path temp_sibling(const std::filesystem::path& path);

// Moves `tmp` to `dst`, replacing a file or directory at `dst`. A directory is swapped through
// a second temporary name, so `dst` is never missing both the old and the new content on
// failure. On failure `tmp` is removed and IoError names `dst`.
void rename_into_place(const std::filesystem::path& tmp, const std::filesystem::path& dst);

}  // namespace kldq
