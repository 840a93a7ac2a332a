// Checkpoint directory resolution: model.safetensors.index.json (sharded), model.safetensors, or
// all *.safetensors; shard paths may not escape the directory; pickle files are refused.
#include "kldq/io/checkpoint.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/hash.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::io {
namespace fs = std::filesystem;
namespace {

// A shard name from the index must be a plain relative path inside the checkpoint directory
// (no absolute path, no ".."). Symbolic links are followed: the Hugging Face cache stores
// snapshots as links into ../../blobs, and the link itself was placed by the user's tools.
fs::path safe_shard_path(const fs::path& dir, const std::string& name, const fs::path& index) {
  const fs::path rel(name);
  bool bad = name.empty() || rel.is_absolute() || rel.has_root_name();
  for (const auto& part : rel)
    if (part == "..") bad = true;
  if (bad)
    throw IoError(
        fmt::format("{}: shard path '{}' escapes the checkpoint directory", index.string(), name));
  return dir / rel;
}

bool is_pickle(const fs::path& p) {
  const auto ext = p.extension().string();
  return ext == ".bin" || ext == ".pt" || ext == ".pth" || ext == ".ckpt";
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir) {
  require_utf8_path(dir, "checkpoint", false);
  if (!fs::is_directory(dir))
    throw IoError(fmt::format("{}: not a checkpoint directory", dir.string()));
  Checkpoint ck;
  ck.dir_ = dir;
  std::vector<fs::path> shards;
  std::map<std::string, std::string> weight_map;
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const auto j = read_json_file(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw IoError(fmt::format("{}: missing object 'weight_map'", index.string()));
    std::set<std::string> files;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string())
        throw IoError(fmt::format("{}: weight_map.{} is not a string", index.string(), name));
      weight_map[name] = file.get<std::string>();
      files.insert(file.get<std::string>());
    }
    for (const auto& f : files) shards.push_back(safe_shard_path(dir, f, index));
  } else if (fs::exists(dir / "model.safetensors")) {
    shards.push_back(dir / "model.safetensors");
  } else {
    std::vector<fs::path> pickles;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() == ".safetensors") shards.push_back(e.path());
      if (is_pickle(e.path())) pickles.push_back(e.path());
    }
    std::sort(shards.begin(), shards.end());
    if (shards.empty() && !pickles.empty())
      throw UnsupportedError(fmt::format(
          "{}: only PyTorch pickle weights ({}) found; kldq refuses them because loading a pickle "
          "can execute arbitrary code. Convert the checkpoint to safetensors "
          "(save_pretrained(..., safe_serialization=True)).",
          dir.string(), pickles.front().filename().string()));
    if (shards.empty())
      throw IoError(fmt::format("{}: no *.safetensors weights in this directory", dir.string()));
  }
  for (const auto& path : shards) {
    auto file = SafetensorsFile::open(path);
    const size_t idx = ck.files_.size();
    for (const auto& t : file->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(t.name);
        if (it == weight_map.end() || dir / it->second != path) continue;  // index is authoritative
      }
      if (!ck.where_.emplace(t.name, idx).second)
        throw IoError(
            fmt::format("{}: tensor '{}' appears in more than one file", dir.string(), t.name));
    }
    ck.files_.push_back(std::move(file));
  }
  for (const auto& [name, file] : weight_map)
    if (!ck.where_.count(name))
      throw IoError(fmt::format("{}: tensor '{}' listed in the index is missing from {}",
                                index.string(), name, file));
  return ck;
}

std::vector<std::string> Checkpoint::names() const {
  std::set<std::string> out;
  for (const auto& [name, _] : where_) out.insert(name);
  for (const auto& [name, _] : derived_) out.insert(name);
  return {out.begin(), out.end()};
}

void Checkpoint::overlay(std::map<std::string, Derived> derived,
                         const std::set<std::string>& hidden,
                         std::map<std::string, std::string> metadata) {
  for (const auto& name : hidden) where_.erase(name);
  for (auto& [name, d] : derived) {
    where_.erase(name);
    derived_[name] = std::move(d);
  }
  for (auto& [key, value] : metadata) overlay_meta_[key] = std::move(value);
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  if (const auto d = derived_.find(name); d != derived_.end()) return d->second.info;
  auto it = where_.find(name);
  if (it == where_.end())
    throw IoError(fmt::format("{}: missing tensor '{}'", dir_.string(), name));
  return *files_[it->second]->find(name);
}

at::Tensor Checkpoint::tensor(const std::string& name) const {
  const TensorInfo& i = info(name);  // throws with the checkpoint's name when absent
  if (const auto d = derived_.find(name); d != derived_.end()) {
    at::Tensor t = d->second.make();
    check(t.scalar_type() == i.scalar_type && t.sizes().vec() == i.shape,
          fmt::format("derived tensor '{}' differs from its declared dtype or shape", name));
    return t;
  }
  return files_[where_.at(name)]->tensor(name);
}

uint64_t Checkpoint::file_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) n += f->file_bytes();
  return n;
}

std::string Checkpoint::fingerprint() const {
  constexpr uint64_t kSample = 64 << 10, kSamples = 64;
  Sha256 h;
  h.update(sha256_path(config_path()));
  std::vector<char> buf(kSample);
  for (const auto& f : files_) {
    std::ifstream in(f->path(), std::ios::binary);
    if (!in) throw IoError(fmt::format("{}: cannot read", f->path().string()));
    const uint64_t size = fs::file_size(f->path());
    h.update(fmt::format("{}\n{}\n", f->path().filename().string(), size));
    const uint64_t n = size <= kSample * kSamples ? 1 : kSamples;
    const uint64_t len = n == 1 ? size : kSample;
    buf.resize(len);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t at = n == 1 ? 0 : i * (size - kSample) / (kSamples - 1);
      in.seekg(static_cast<std::streamoff>(at));
      in.read(buf.data(), static_cast<std::streamsize>(len));
      if (!in) throw IoError(fmt::format("{}: read failed at byte {}", f->path().string(), at));
      h.update(buf.data(), len);
    }
  }
  return h.hex();
}

void require_checkpoint_dir(const std::string& dir) {
  if (!std::filesystem::is_directory(dir))
    throw ConfigError(fmt::format("{}: no such checkpoint directory", dir));
}

}  // namespace kldq::io
