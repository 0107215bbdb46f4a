#include "core/io/files.h"

#include <ftw.h>
#include <sys/stat.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "core/io/durable.h"

namespace tessera {
namespace {

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  return std::remove(path) == 0 || errno == ENOENT ? 0 : errno;
}

}  // namespace

void remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept {
  ec.clear();
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) ec.assign(errno, std::generic_category());
    return;
  }
  // Depth first (children before their folder), without following symlinks.
  const int rc = ::nftw(path.c_str(), remove_entry, 32, FTW_DEPTH | FTW_PHYS);
  if (rc != 0) ec.assign(rc > 0 ? rc : errno, std::generic_category());
}

void remove_tree(const std::filesystem::path& path) {
  std::error_code ec;
  remove_tree(path, ec);
  check(!ec, "cannot delete '", path.string(), "': ", ec.message());
}

void write_bytes_atomic(const std::filesystem::path& path, const void* data, std::size_t size) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  io::detail::write_file_atomic(path, [&](io::detail::FileWriter& out) { out.write(data, size); });
}

void write_text_atomic(const std::filesystem::path& path, const std::string& text) {
  write_bytes_atomic(path, text.data(), text.size());
}

uint32_t file_crc32(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), "cannot open '", path.string(), "'");
  std::vector<char> buffer(1 << 20);
  uLong crc = ::crc32(0L, Z_NULL, 0);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    crc = ::crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()), static_cast<uInt>(in.gcount()));
  }
  check(!in.bad(), "cannot read '", path.string(), "'");
  return static_cast<uint32_t>(crc);
}

std::filesystem::path resolve_artifact(const std::filesystem::path& path, const std::filesystem::path& base_dir,
                                       const std::string& default_name) {
  std::filesystem::path p = path.is_relative() && !base_dir.empty() ? base_dir / path : path;
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec)) p /= default_name;
  return p;
}

}  // namespace tessera
