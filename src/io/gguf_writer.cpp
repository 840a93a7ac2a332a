// GGUF writing (include/kldq/io/gguf.hpp has the container layout): metadata serialised as it is
// added, tensor data streamed at write time so a large model never sits whole in memory.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <unistd.h>

#include <bit>
#include <cstdio>
#include <cstring>
#include <memory>

#include "kldq/core/error.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/gguf.hpp"

namespace kldq::io {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF is written little-endian");
constexpr uint64_t kAlignment = 32;  // GGUF's default general.alignment

enum ValueType : uint32_t { U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9 };

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
void put_string(std::string& s, const std::string& v) {
  put<uint64_t>(s, v.size());
  s += v;
}

struct BlockInfo {
  int64_t block;   // weights per block
  uint64_t bytes;  // bytes per block
};
BlockInfo block_info(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return {1, 4};
    case GgmlType::F16:
    case GgmlType::BF16:
      return {1, 2};
    case GgmlType::Q4_0:
    case GgmlType::IQ4_NL:
      return {32, 18};
    case GgmlType::Q4_1:
      return {32, 20};
    case GgmlType::Q8_0:
      return {32, 34};
  }
  throw InternalError("ggml type without a block layout");
}

}  // namespace

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return "F32";
    case GgmlType::F16:
      return "F16";
    case GgmlType::BF16:
      return "BF16";
    case GgmlType::Q4_0:
      return "Q4_0";
    case GgmlType::Q4_1:
      return "Q4_1";
    case GgmlType::Q8_0:
      return "Q8_0";
    case GgmlType::IQ4_NL:
      return "IQ4_NL";
  }
  return "?";
}

uint64_t ggml_row_bytes(GgmlType t, int64_t n) {
  const BlockInfo b = block_info(t);
  check(n % b.block == 0, "ggml_row_bytes: row is not whole blocks");
  return static_cast<uint64_t>(n / b.block) * b.bytes;
}

void GgufWriter::add_u32(const std::string& key, uint32_t v) {
  put_string(kv_, key), put<uint32_t>(kv_, U32), put(kv_, v), ++kv_count_;
}
void GgufWriter::add_f32(const std::string& key, float v) {
  put_string(kv_, key), put<uint32_t>(kv_, F32), put(kv_, v), ++kv_count_;
}
void GgufWriter::add_bool(const std::string& key, bool v) {
  put_string(kv_, key), put<uint32_t>(kv_, BOOL), put<uint8_t>(kv_, v ? 1 : 0), ++kv_count_;
}
void GgufWriter::add_string(const std::string& key, const std::string& v) {
  put_string(kv_, key), put<uint32_t>(kv_, STRING), put_string(kv_, v), ++kv_count_;
}
void GgufWriter::add_strings(const std::string& key, const std::vector<std::string>& v) {
  put_string(kv_, key), put<uint32_t>(kv_, ARRAY), put<uint32_t>(kv_, STRING);
  put<uint64_t>(kv_, v.size());
  for (const auto& s : v) put_string(kv_, s);
  ++kv_count_;
}
void GgufWriter::add_f32s(const std::string& key, const std::vector<float>& v) {
  put_string(kv_, key), put<uint32_t>(kv_, ARRAY), put<uint32_t>(kv_, F32);
  put<uint64_t>(kv_, v.size());
  for (float x : v) put(kv_, x);
  ++kv_count_;
}
void GgufWriter::add_i32s(const std::string& key, const std::vector<int32_t>& v) {
  put_string(kv_, key), put<uint32_t>(kv_, ARRAY), put<uint32_t>(kv_, I32);
  put<uint64_t>(kv_, v.size());
  for (int32_t x : v) put(kv_, x);
  ++kv_count_;
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type,
                            const std::vector<int64_t>& shape, std::function<at::Tensor()> bytes) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  tensors_.push_back({name, type, shape,
                      ggml_row_bytes(type, shape.back()) * static_cast<uint64_t>(rows),
                      std::move(bytes)});
}

void GgufWriter::write(const std::filesystem::path& path) const {
  std::string head;
  put<uint32_t>(head, 0x46554747u);  // "GGUF"
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_count_);
  head += kv_;
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(head, *it);
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, offset);
    offset += (t.bytes + kAlignment - 1) / kAlignment * kAlignment;
  }
  head.resize((head.size() + kAlignment - 1) / kAlignment * kAlignment, '\0');

  TempOutput tmp(path, TempOutput::Kind::FILE);
  // Closed on every path (a tensor's maker may throw); the temporary is removed with `tmp`.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(fdopen(dup(tmp.fd()), "wb"), &std::fclose);
  std::FILE* f = file.get();
  if (!f) throw IoError(fmt::format("{}: cannot write", path.string()));
  auto write = [&](const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f) != n)
      throw IoError(fmt::format("{}: write failed (disk full?)", path.string()));
  };
  write(head.data(), head.size());
  static const char zeros[kAlignment] = {};
  for (const Tensor& t : tensors_) {
    const at::Tensor b = t.make().contiguous();
    check(b.scalar_type() == at::kByte && static_cast<uint64_t>(b.numel()) == t.bytes,
          fmt::format("GGUF tensor '{}': {} bytes made, {} expected", t.name, b.numel(), t.bytes));
    write(b.data_ptr(), t.bytes);
    write(zeros, (kAlignment - t.bytes % kAlignment) % kAlignment);
  }
  if (std::fclose(file.release()) != 0)
    throw IoError(fmt::format("{}: write failed", path.string()));
  tmp.commit();
}

}  // namespace kldq::io
