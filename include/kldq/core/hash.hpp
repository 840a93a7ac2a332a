// SHA-256 (FIPS 180-4) of byte strings, files and directory trees: the identity of input files
// recorded in every result (metrics.json, profiles), so a number can be traced to the exact data.
// Hand-written: OpenSSL's headers are not on the GPU machine, and libtorch's c10::sha1 hashes
// only whole in-memory strings (and SHA-1); this streams files of any size.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace kldq {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // Lower-case hex of the digest; the object is finished afterwards.
  std::string hex();

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t used_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view bytes);
// Hex digest of a file's bytes (IoError naming the file when unreadable). For a directory: the
// hash over its regular files in sorted relative-path order, each as "path\0<sha256>\n", so a
// renamed or edited file changes it.
std::string sha256_path(const std::filesystem::path& path);

}  // namespace kldq
