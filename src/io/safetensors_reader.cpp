// safetensors reader: mmap and header validation. Every check names the file and tensor, since
// model files are untrusted input (docs/ARCHITECTURE.md, "Checkpoints and untrusted input"): the
// header length must fit the file, the JSON must parse, dtypes must be known, shape x dtype size
// must equal the byte span, and spans must tile the data section (no overlaps, no holes, nothing
// left over).
#include <ATen/ATen.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "kldq/core/error.hpp"
#include "kldq/io/safetensors.hpp"

namespace kldq::io {
namespace {

// The reference implementation caps the header at 100 MB; a larger one is an attack or damage.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeRow {
  const char* name;
  c10::ScalarType type;
};
constexpr DtypeRow kDtypes[] = {
    {"BF16", c10::kBFloat16},
    {"F16", c10::kHalf},
    {"F32", c10::kFloat},
    {"F64", c10::kDouble},
    {"I8", c10::kChar},
    {"U8", c10::kByte},
    {"I16", c10::kShort},
    {"I32", c10::kInt},
    {"I64", c10::kLong},
    {"BOOL", c10::kBool},
    {"F8_E4M3", c10::kFloat8_e4m3fn},
    {"F8_E5M2", c10::kFloat8_e5m2},
};

}  // namespace

std::optional<uint64_t> tensor_bytes(const std::vector<int64_t>& shape, size_t itemsize) {
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t bound = itemsize, bytes = itemsize;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    const uint64_t u = static_cast<uint64_t>(d);
    const uint64_t nonzero = std::max<uint64_t>(u, 1);
    if (bound > kMax / nonzero) return std::nullopt;
    bound *= nonzero;
    bytes *= u;
  }
  return bytes;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

c10::ScalarType scalar_type_from_safetensors(std::string_view dtype, const std::string& what) {
  for (const auto& row : kDtypes)
    if (dtype == row.name) return row.type;
  throw IoError(fmt::format("{}: unsupported dtype '{}'", what, dtype));
}

std::string safetensors_dtype_name(c10::ScalarType type) {
  for (const auto& row : kDtypes)
    if (type == row.type) return row.name;
  throw InternalError(fmt::format("no safetensors dtype for {}", c10::toString(type)));
}

namespace {

// One tensor's header entry, checked: dtype, shape and data_offsets within the data section of
// data_bytes, and agreeing with each other. `what` names the tensor in errors.
TensorInfo tensor_entry(const std::string& name, const nlohmann::json& entry, uint64_t data_bytes,
                        const std::string& what) {
  if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
      !entry.contains("data_offsets"))
    throw IoError(fmt::format("{}: entry needs dtype, shape and data_offsets", what));
  const auto& dt = entry["dtype"];
  const auto& sh = entry["shape"];
  const auto& off = entry["data_offsets"];
  if (!dt.is_string()) throw IoError(fmt::format("{}: dtype is not a string", what));
  if (!sh.is_array()) throw IoError(fmt::format("{}: shape is not an array", what));
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned())
    throw IoError(fmt::format("{}: data_offsets must be two non-negative integers", what));
  TensorInfo info;
  info.name = name;
  info.dtype = dt.get<std::string>();
  info.scalar_type = scalar_type_from_safetensors(info.dtype, what);
  for (const auto& d : sh) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 48))
      throw IoError(fmt::format("{}: shape entries must be integers in [0, 2^48]", what));
    info.shape.push_back(d.get<int64_t>());
  }
  info.begin = off[0].get<uint64_t>();
  info.end = off[1].get<uint64_t>();
  if (info.begin > info.end || info.end > data_bytes)
    throw IoError(fmt::format("{}: data_offsets [{}, {}] out of bounds (data section has {} bytes)",
                              what, info.begin, info.end, data_bytes));
  const auto want = tensor_bytes(info.shape, c10::elementSize(info.scalar_type));
  if (!want)
    throw IoError(fmt::format("{}: shape [{}] is too large", what, fmt::join(info.shape, ", ")));
  if (*want != info.nbytes())
    throw IoError(fmt::format("{}: shape [{}] x {} needs {} bytes but data_offsets span {}", what,
                              fmt::join(info.shape, ", "), info.dtype, *want, info.nbytes()));
  return info;
}

// The tensors (sorted by offset) tile the data section.
void check_tiling(const std::vector<TensorInfo>& tensors, uint64_t data_bytes,
                  const std::string& path) {
  // Empty tensors occupy no bytes and may sit at any offset (the reference writer puts them
  // where the next tensor starts); only non-empty spans can overlap.
  // As the reference library requires, the spans tile the data section: no holes, nothing after
  // the last one. A header length off by a few bytes (which can still parse when the header is
  // padded with spaces) shifts the data section and fails here instead of loading shifted bytes.
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : tensors) {
    if (t.nbytes() == 0) continue;
    if (prev && t.begin < prev->end)
      throw IoError(fmt::format("{}: tensors '{}' and '{}' overlap in the data section", path,
                                prev->name, t.name));
    const uint64_t expected = prev ? prev->end : 0;
    if (t.begin != expected)
      throw IoError(fmt::format(
          "{}: tensor '{}' starts at byte {} of the data section, expected {} (a hole: the header "
          "length or data_offsets are wrong)",
          path, t.name, t.begin, expected));
    prev = &t;
  }
  const uint64_t covered = prev ? prev->end : 0;
  if (covered != data_bytes)
    throw IoError(fmt::format(
        "{}: the tensors cover {} bytes but the data section has {} (the header length or "
        "data_offsets are wrong)",
        path, covered, data_bytes));
}

}  // namespace

void parse_safetensors_header(std::string_view header_json, uint64_t data_bytes,
                              const std::string& path, std::vector<TensorInfo>& tensors,
                              std::map<std::string, std::string>& metadata) {
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_json);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(fmt::format("{}: safetensors header is not valid JSON ({})", path, e.what()));
  }
  if (!header.is_object())
    throw IoError(fmt::format("{}: safetensors header is not a JSON object", path));
  for (const auto& [name, entry] : header.items()) {
    const std::string what = fmt::format("{}: tensor '{}'", path, name);
    if (name == "__metadata__") {
      if (!entry.is_object()) throw IoError(fmt::format("{}: __metadata__ is not an object", path));
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string())
          throw IoError(fmt::format("{}: __metadata__.{} is not a string", path, k));
        metadata[k] = v.get<std::string>();
      }
      continue;
    }
    TensorInfo info = tensor_entry(name, entry, data_bytes, what);
    tensors.push_back(std::move(info));
  }
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  check_tiling(tensors, data_bytes, path);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string p = path.string();
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(fmt::format("{}: cannot open ({})", p, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(fmt::format("{}: not a regular file", p));
  }
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->file_bytes_ = static_cast<uint64_t>(st.st_size);
  if (file->file_bytes_ < 8) {
    ::close(fd);
    throw IoError(fmt::format("{}: truncated safetensors file ({} bytes, header length needs 8)", p,
                              file->file_bytes_));
  }
  // MAP_PRIVATE with write permission: tensors may be modified in place by libtorch kernels
  // without ever touching the file (copy-on-write).
  void* map = ::mmap(nullptr, file->file_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED)
    throw IoError(fmt::format("{}: mmap failed ({})", p, std::strerror(errno)));
  file->map_ = map;
  uint64_t len = 0;
  std::memcpy(&len, map, 8);  // little-endian on every platform kldq builds for
  if (len > kMaxHeaderBytes || len > file->file_bytes_ - 8)
    throw IoError(
        fmt::format("{}: safetensors header length {} runs past the end of the file ({} bytes)", p,
                    len, file->file_bytes_));
  file->header_len_ = len;
  const char* base = static_cast<const char*>(map);
  parse_safetensors_header(std::string_view(base + 8, len), file->file_bytes_ - 8 - len, p,
                           file->tensors_, file->metadata_);
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, file_bytes_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

at::Tensor SafetensorsFile::tensor(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (!info) throw IoError(fmt::format("{}: no tensor '{}'", path_.string(), name));
  char* data = static_cast<char*>(map_) + 8 + header_len_ + info->begin;
  auto self = shared_from_this();
  auto opts = at::TensorOptions().dtype(info->scalar_type).device(at::kCPU);
  at::Tensor view = at::from_blob(
      data, info->shape, [self](void*) {}, opts);
  const auto align = c10::elementSize(info->scalar_type);
  if (reinterpret_cast<uintptr_t>(data) % align != 0) return view.clone();
  return view;
}

}  // namespace kldq::io
