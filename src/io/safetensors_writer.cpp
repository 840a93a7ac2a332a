// safetensors writer: streams tensors in a fixed order into a temporary file and renames it into
// place on commit, so an interrupted write never leaves a partial checkpoint.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "kldq/core/error.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/safetensors.hpp"

namespace kldq::io {
namespace {

void write_all(std::FILE* f, const void* data, size_t n, const std::filesystem::path& path) {
  if (n != 0 && std::fwrite(data, 1, n, f) != n)
    throw IoError(fmt::format("{}: write failed ({})", path.string(), std::strerror(errno)));
}

}  // namespace

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path, std::vector<TensorSpec> specs,
                                     const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)), specs_(std::move(specs)) {
  // ordered_json keeps the header in data order, which is how the reference writer lays it out.
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& s : specs_) {
    if (header.contains(s.name))
      throw InternalError(fmt::format("{}: tensor '{}' written twice", path_.string(), s.name));
    const auto n = tensor_bytes(s.shape, c10::elementSize(s.dtype));
    if (!n)
      throw InternalError(fmt::format("{}: tensor '{}' is too large", path_.string(), s.name));
    header[s.name] = {{"dtype", safetensors_dtype_name(s.dtype)},
                      {"shape", s.shape},
                      {"data_offsets", {offset, offset + *n}}};
    offset += *n;
  }
  std::string text = header.dump();
  // Pad the header with spaces to a multiple of 8 so every tensor starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  tmp_ = std::make_unique<TempOutput>(path_, TempOutput::Kind::FILE);
  const int fd = ::dup(tmp_->fd());
  file_ = fd < 0 ? nullptr : ::fdopen(fd, "wb");
  if (!file_) {
    if (fd >= 0) ::close(fd);
    throw IoError(fmt::format("{}: cannot open for writing ({})", tmp_->path().string(),
                              std::strerror(errno)));
  }
  try {
    const uint64_t len = text.size();
    write_all(file_, &len, 8, tmp_->path());
    write_all(file_, text.data(), text.size(), tmp_->path());
  } catch (...) {
    // The destructor does not run for a constructor that throws: close here (tmp_ removes the
    // temporary as it goes).
    std::fclose(file_);
    file_ = nullptr;
    throw;
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  if (file_) std::fclose(file_);  // tmp_ then removes the uncommitted temporary
}

void SafetensorsWriter::write(const std::string& name, const at::Tensor& tensor) {
  if (next_ >= specs_.size() || specs_[next_].name != name)
    throw InternalError(fmt::format("{}: tensor '{}' written out of order", path_.string(), name));
  const TensorSpec& s = specs_[next_];
  if (tensor.scalar_type() != s.dtype || tensor.sizes().vec() != s.shape)
    throw InternalError(fmt::format("{}: tensor '{}' does not match its declared dtype/shape",
                                    path_.string(), name));
  const at::Tensor host = tensor.to(at::kCPU).contiguous();
  write_all(file_, host.data_ptr(), host.nbytes(), tmp_->path());
  ++next_;
}

void SafetensorsWriter::commit() {
  if (next_ != specs_.size())
    throw InternalError(fmt::format("{}: {} of {} tensors written before commit", path_.string(),
                                    next_, specs_.size()));
  const bool ok = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  std::fclose(file_);
  file_ = nullptr;
  if (!ok)
    throw IoError(
        fmt::format("{}: flush failed ({})", tmp_->path().string(), std::strerror(errno)));
  tmp_->commit();
}

void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [name, t] : tensors) specs.push_back({name, t.scalar_type(), t.sizes().vec()});
  SafetensorsWriter writer(path, std::move(specs), metadata);
  for (const auto& [name, t] : tensors) writer.write(name, t);
  writer.commit();
}

}  // namespace kldq::io
