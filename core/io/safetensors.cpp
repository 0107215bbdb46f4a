#include "core/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/io/durable.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tessera's safetensors I/O assumes a little-endian host"
#endif

namespace tessera::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct DtypeEntry {
  const char* name;
  at::ScalarType type;
};

constexpr DtypeEntry kDtypes[] = {
    {"F64", at::kDouble},          {"F32", at::kFloat},           {"F16", at::kHalf},
    {"BF16", at::kBFloat16},       {"I64", at::kLong},            {"I32", at::kInt},
    {"I16", at::kShort},           {"I8", at::kChar},             {"U8", at::kByte},
    {"BOOL", at::kBool},           {"U16", at::kUInt16},          {"U32", at::kUInt32},
    {"U64", at::kUInt64},          {"F8_E4M3", at::kFloat8_e4m3fn}, {"F8_E5M2", at::kFloat8_e5m2},
};

bool dtype_from_name(const std::string& name, at::ScalarType& out) {
  for (const auto& e : kDtypes) {
    if (name == e.name) {
      out = e.type;
      return true;
    }
  }
  return false;
}

std::string known_dtypes() {
  std::string s;
  for (const auto& e : kDtypes) {
    if (!s.empty()) s += ' ';
    s += e.name;
  }
  return s;
}

constexpr const char* kMetadataKey = "__metadata__";

// ---- reading ------------------------------------------------------------------------------------

struct Entry {
  std::string name;
  at::ScalarType type;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct Header {
  std::vector<Entry> entries;  // sorted by name
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;     // 8 + N
  uint64_t data_size = 0;      // file size - data_start
};

class InputFile {
 public:
  explicit InputFile(const fs::path& path) : path_(path) {
    std::error_code ec;
    const auto status = fs::status(path, ec);
    if (!fs::exists(status)) fail("safetensors file '", path.string(), "' does not exist");
    if (fs::is_directory(status))
      fail("safetensors file '", path.string(), "' is a directory, not a file");
    do {
      fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0)
      fail("cannot open safetensors file '", path.string(), "': ", detail::errno_text(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0)
      fail("cannot stat safetensors file '", path.string(), "': ", detail::errno_text(errno));
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~InputFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  uint64_t size() const { return size_; }

  // Reads exactly `n` bytes at `offset`; a short read means the file changed or is truncated.
  void read(uint64_t offset, void* dst, uint64_t n) const {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, uint64_t{1} << 30));
      const ssize_t got = ::pread(fd_, p, chunk, static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        fail("cannot read safetensors file '", path_.string(), "': ", detail::errno_text(errno));
      }
      if (got == 0)
        fail("safetensors file '", path_.string(), "' is truncated: unexpected end of file at byte ",
             offset);
      p += got;
      offset += static_cast<uint64_t>(got);
      n -= static_cast<uint64_t>(got);
    }
  }

 private:
  fs::path path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

Header read_header(const InputFile& file, const fs::path& path) {
  const std::string where = str("safetensors file '", path.string(), "'");
  if (file.size() < 8)
    fail(where, " is too short (", file.size(), " bytes): a safetensors file starts with an 8-byte "
         "header length");
  unsigned char len_bytes[8];
  file.read(0, len_bytes, 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > file.size() - 8)
    fail(where, " is corrupt or truncated: its header length (", n, " bytes) exceeds the ",
         file.size() - 8, " bytes that follow it");
  // The reference implementation's limit; it also keeps a corrupt length from allocating gigabytes.
  constexpr uint64_t kMaxHeader = 100'000'000;
  if (n > kMaxHeader)
    fail(where, " is corrupt: its header length (", n, " bytes) exceeds the ", kMaxHeader,
         "-byte limit of the format");
  if (n < 2) fail(where, " has an empty header (", n, " bytes); expected a JSON object");

  std::string text(static_cast<size_t>(n), '\0');
  file.read(8, text.data(), n);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(where, " has an invalid JSON header: ", e.what());
  }
  if (!j.is_object()) fail(where, " has a JSON header that is not an object");

  Header h;
  h.data_start = 8 + n;
  h.data_size = file.size() - h.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == kMetadataKey) {
      if (v.is_null()) continue;
      if (!v.is_object()) fail(where, ": \"__metadata__\" must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(where, ": \"__metadata__\" value for '", m.key(), "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string what = str(where, ", tensor '", key, "'");
    if (!v.is_object()) fail(what, ": header entry is not an object");
    Entry e;
    e.name = key;
    const auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) fail(what, ": missing or non-string \"dtype\"");
    if (!dtype_from_name(dt->get<std::string>(), e.type))
      fail(what, ": unknown dtype \"", dt->get<std::string>(), "\" (supported: ", known_dtypes(),
           ")");
    const auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) fail(what, ": missing or non-array \"shape\"");
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned())
        fail(what, ": shape ", sh->dump(), " must hold non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(what, ": shape dimension ", dim, " is too large");
      e.shape.push_back(static_cast<int64_t>(dim));
      overflow = overflow || __builtin_mul_overflow(numel, dim, &numel);
    }
    const auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail(what, ": \"data_offsets\" must be [begin, end] with non-negative integers");
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    if (e.end < e.begin)
      fail(what, ": data_offsets [", e.begin, ", ", e.end, "] end before they begin");
    uint64_t nbytes = 0;
    overflow = overflow || __builtin_mul_overflow(
                               numel, static_cast<uint64_t>(c10::elementSize(e.type)), &nbytes);
    if (overflow) fail(what, ": shape ", sh->dump(), " is too large");
    if (nbytes != e.end - e.begin)
      fail(what, ": size mismatch: dtype ", dt->get<std::string>(), " and shape ", sh->dump(),
           " need ", nbytes, " bytes but data_offsets [", e.begin, ", ", e.end, "] span ",
           e.end - e.begin);
    if (e.end > h.data_size)
      fail(what, ": data_offsets [", e.begin, ", ", e.end, "] are out of bounds: the data section "
           "holds only ", h.data_size, " bytes (the file is truncated or its header is corrupt)");
    h.entries.push_back(std::move(e));
  }

  // Overlap check: sort by position; empty tensors occupy nothing.
  std::vector<const Entry*> by_offset;
  for (const auto& e : h.entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Entry& a = *by_offset[i - 1];
    const Entry& b = *by_offset[i];
    if (b.begin < a.end)
      fail(where, ": the data of tensors '", a.name, "' [", a.begin, ", ", a.end, ") and '", b.name,
           "' [", b.begin, ", ", b.end, ") overlap");
  }
  std::sort(h.entries.begin(), h.entries.end(),
            [](const Entry& a, const Entry& b) { return a.name < b.name; });
  return h;
}

// ---- writing ------------------------------------------------------------------------------------

struct Planned {
  const std::string* name;
  const at::Tensor* tensor;
  uint64_t nbytes;
};

}  // namespace

std::string safetensors_dtype_name(at::ScalarType type) {
  for (const auto& e : kDtypes)
    if (e.type == type) return e.name;
  fail("dtype ", c10::toString(type), " cannot be stored in safetensors (supported: ",
       known_dtypes(), ")");
}

void save_safetensors(const fs::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const std::string where = str("safetensors file '", path.string(), "'");
  // Validate everything before touching the disk.
  std::vector<Planned> plan;
  plan.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    check(name != kMetadataKey, "cannot write ", where, ": \"__metadata__\" is reserved and "
          "cannot name a tensor");
    check(tensor.defined(), "cannot write ", where, ": tensor '", name, "' is undefined");
    check(tensor.layout() == at::kStrided, "cannot write ", where, ": tensor '", name,
          "' is not dense (layout ", tensor.layout(), ")");
    check(!tensor.is_quantized(), "cannot write ", where, ": tensor '", name, "' is quantized");
    try {
      safetensors_dtype_name(tensor.scalar_type());
    } catch (const Error& e) {
      fail("cannot write ", where, ", tensor '", name, "': ", e.what());
    }
    plan.push_back({&name, &tensor,
                    static_cast<uint64_t>(tensor.numel()) *
                        static_cast<uint64_t>(tensor.element_size())});
  }
  std::stable_sort(plan.begin(), plan.end(),
                   [](const Planned& a, const Planned& b) { return *a.name < *b.name; });
  for (size_t i = 1; i < plan.size(); ++i)
    check(*plan[i].name != *plan[i - 1].name, "cannot write ", where, ": duplicate tensor name '",
          *plan[i].name, "'");

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& p : plan) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = safetensors_dtype_name(p.tensor->scalar_type());
    entry["shape"] = p.tensor->sizes().vec();
    entry["data_offsets"] = {offset, offset + p.nbytes};
    header[*p.name] = std::move(entry);
    offset += p.nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail("cannot write ", where, ": a tensor name or metadata string is not valid UTF-8 (",
         e.what(), ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len_bytes[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);

  detail::write_file_atomic(path, [&](detail::FileWriter& out) {
    out.write(len_bytes, 8);
    out.write(text.data(), text.size());
    for (const auto& p : plan) {
      if (p.nbytes == 0) continue;
      const at::Tensor cpu = p.tensor->detach().to(at::kCPU).contiguous();
      out.write(cpu.const_data_ptr(), p.nbytes);
    }
  });
}

SafetensorsFile load_safetensors(const fs::path& path) {
  InputFile file(path);
  Header h = read_header(file, path);
  SafetensorsFile result;
  result.metadata = std::move(h.metadata);
  for (const auto& e : h.entries) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.type).device(at::kCPU));
    const uint64_t nbytes = e.end - e.begin;
    if (nbytes > 0) file.read(h.data_start + e.begin, t.data_ptr(), nbytes);
    if (e.type == at::kBool) {
      const auto* bytes = static_cast<const unsigned char*>(t.const_data_ptr());
      for (uint64_t i = 0; i < nbytes; ++i)
        if (bytes[i] > 1)
          fail("safetensors file '", path.string(), "', tensor '", e.name, "': BOOL byte ", i,
               " has value ", static_cast<int>(bytes[i]), " (must be 0 or 1)");
    }
    result.tensors.emplace(e.name, std::move(t));
  }
  return result;
}

std::vector<std::string> list_safetensors(const fs::path& path) {
  InputFile file(path);
  const Header h = read_header(file, path);
  std::vector<std::string> names;
  names.reserve(h.entries.size());
  for (const auto& e : h.entries) names.push_back(e.name);
  return names;
}

}  // namespace tessera::io
