// File-system helpers that must not go through std::filesystem's recursive removal: the torch
// wheel's libtorch.so exports its own copy of std::filesystem::remove_all, which crashes when
// called, and the dynamic linker may bind our calls to it (see docs/ARCHITECTURE.md, Build).
#pragma once

#include <filesystem>

namespace kldq {

// Removes a file or a directory tree (symbolic links are removed, never followed). Returns false
// if something could not be removed; a missing path counts as removed.
bool remove_tree(const std::filesystem::path& path) noexcept;

}  // namespace kldq
