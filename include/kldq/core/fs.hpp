// File-system helpers: output path normalisation, and tree removal that does not go through
// std::filesystem::remove_all, since the torch wheel's libtorch.so exports its own copy of it,
// which crashes when called, and the dynamic linker may bind our calls to it (docs/ARCHITECTURE.md,
// Build).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace kldq {

// Removes a file or a directory tree (symbolic links are removed, never followed). Returns false
// if something could not be removed; a missing path counts as removed.
bool remove_tree(const std::filesystem::path& path) noexcept;

// Whether `s` is well-formed UTF-8 (RFC 3629: shortest forms, no surrogates).
bool valid_utf8(std::string_view s);
// ConfigError (when `config`) or IoError "WHAT PATH: the path is not valid UTF-8 ..." unless it
// is: paths are recorded in JSON, which cannot hold other bytes, so they are refused up front.
void require_utf8_path(const std::filesystem::path& path, const char* what, bool config);

// `path` made absolute and normal, without a trailing separator; ConfigError naming `option`
// when it has no final component (".", "/", "dir/..").
std::filesystem::path output_path(const std::filesystem::path& path, const char* option);

// Size caps of input files by kind, checked before reading (docs/ARCHITECTURE.md, "Checkpoints
// and untrusted input"): JSON and YAML documents (config.json, tokenizer.json, plans, profiles,
// experiment files; the largest real one, a 150k-vocabulary tokenizer.json, is 7 MB) and data
// files (corpora, MMLU, predictions, run records; WikiText-2's test split is 1.3 MB).
inline constexpr uint64_t kMaxDocumentBytes = uint64_t(64) << 20;
inline constexpr uint64_t kMaxDataBytes = uint64_t(1) << 30;

// The whole content of `path`, which must be a regular file (after following symbolic links:
// FIFOs, sockets and devices are refused without blocking) of at most `max_bytes`. Errors name
// the file: ConfigError when `config` (a file the user named as configuration), else IoError.
std::string read_input_file(const std::filesystem::path& path, uint64_t max_bytes, bool config);

}  // namespace kldq
