// safetensors reading (mmap, validated header: format spec at
// https://github.com/huggingface/safetensors#format) and atomic streaming writing.
//
// File layout:
//   [u64 little-endian N][N bytes of JSON header][data bytes ...]
//   header: {"__metadata__": {str: str}, "<name>": {"dtype": "BF16", "shape": [..],
//            "data_offsets": [begin, end]}, ...}   offsets are relative to the data start.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kldq {
class TempOutput;
}

namespace kldq::io {

struct TensorInfo {
  std::string name;
  std::string dtype;  // safetensors spelling: "BF16", "F32", ...
  c10::ScalarType scalar_type;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

// Bytes of a tensor of `shape` with elements of `itemsize` bytes; nullopt when the element
// count or the byte count would not fit in int64 (zero-sized dimensions included, so
// [0, 2^48, 2^48] is refused too: its strides would overflow).
std::optional<uint64_t> tensor_bytes(const std::vector<int64_t>& shape, size_t itemsize);

// safetensors dtype name <-> ScalarType; unknown names are an IoError naming `what`.
c10::ScalarType scalar_type_from_safetensors(std::string_view dtype, const std::string& what);
std::string safetensors_dtype_name(c10::ScalarType type);

// A validated, memory-mapped safetensors file. Tensors it hands out are zero-copy CPU views
// that keep the mapping alive.
class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(std::string_view name) const;
  // CPU tensor viewing the mapped bytes (copied only when misaligned for its dtype).
  at::Tensor tensor(std::string_view name) const;
  uint64_t file_bytes() const { return file_bytes_; }
  uint64_t header_bytes() const { return 8 + header_len_; }

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  uint64_t file_bytes_ = 0;
  uint64_t header_len_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Parses and validates a header against the data size; errors name `path` and the tensor.
void parse_safetensors_header(std::string_view header_json, uint64_t data_bytes,
                              const std::string& path, std::vector<TensorInfo>& tensors,
                              std::map<std::string, std::string>& metadata);

struct TensorSpec {
  std::string name;
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
};

// Streams tensors into `path` in the order of `specs`, so a checkpoint larger than memory
// can be written one tensor at a time. Writes to a temporary file; commit() renames it into
// place, and an uncommitted writer removes it (no partial output).
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::filesystem::path path, std::vector<TensorSpec> specs,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Writes the next tensor; its name, dtype and shape must match the next spec.
  void write(const std::string& name, const at::Tensor& tensor);
  void commit();

 private:
  std::filesystem::path path_;
  std::unique_ptr<TempOutput> tmp_;  // the file being written, beside path_
  std::vector<TensorSpec> specs_;
  size_t next_ = 0;
  std::FILE* file_ = nullptr;
};

// Writes all tensors at once (small files: tests, logits dumps).
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace kldq::io
