// A Hugging Face checkpoint directory: its safetensors files (single, sharded through
// model.safetensors.index.json, or several) and a name -> tensor lookup across them.
// Pickle checkpoints (*.bin, *.pt, *.pth) are refused: unpickling can execute code.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "kldq/io/safetensors.hpp"

namespace kldq::io {

class Checkpoint {
 public:
  // Opens `dir`, validating every safetensors header and the shard index.
  static Checkpoint open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path config_path() const { return dir_ / "config.json"; }
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const {
    return where_.count(name) != 0 || derived_.count(name) != 0;
  }
  // Header entry of `name` (IoError naming the checkpoint when absent).
  const TensorInfo& info(const std::string& name) const;
  // CPU tensor viewing the mapped file.
  at::Tensor tensor(const std::string& name) const;
  // Sum of the safetensors file sizes, headers included.
  uint64_t file_bytes() const;
  // Content fingerprint, hex SHA-256 over config.json, then per safetensors file (in order) its
  // name, size and 64 evenly spaced 64 KiB samples (the whole file when it is under 4 MiB). Reads
  // at most 4 MiB per file, so it costs milliseconds for a 14B model, yet two checkpoints whose
  // weights differ throughout (another seed, a full fine-tune) differ in it; an edit confined to
  // a few layers can fall between the samples. Profiles and plans record it to refuse mixing
  // models; it is not a full hash of the weights.
  std::string fingerprint() const;

  // Another tool's layout presented as kldq's (model/foreign.hpp): `derived` tensors are added or
  // replace stored ones of the same name (made on demand by `make`, checked against `info`),
  // `hidden` stored tensors disappear, and `metadata` is what the headers would carry.
  struct Derived {
    TensorInfo info;
    std::function<at::Tensor()> make;
  };
  void overlay(std::map<std::string, Derived> derived, const std::set<std::string>& hidden,
               std::map<std::string, std::string> metadata);
  // Header metadata of the overlay (empty for checkpoints read as stored).
  const std::map<std::string, std::string>& overlay_metadata() const { return overlay_meta_; }

 private:
  std::filesystem::path dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
  std::map<std::string, Derived> derived_;
  std::map<std::string, std::string> overlay_meta_;
};

// ConfigError "DIR: no such checkpoint directory" unless `dir` is a directory (checked before
// any work or log line that names the model).
void require_checkpoint_dir(const std::string& dir);

}  // namespace kldq::io
