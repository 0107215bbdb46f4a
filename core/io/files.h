// Small file-system helpers shared by every layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

namespace tessera {

// Deletes `path` and everything below it (no error if it does not exist); symlinks are removed, not
// followed. Use it instead of std::filesystem::remove_all: the torch wheel's libraries export their
// own copies of libstdc++'s filesystem functions, and on some toolchains calls to remove_all bind to
// a copy that crashes on non-empty folders.
void remove_tree(const std::filesystem::path& path);
void remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept;

// Writes a whole file crash-safely: a temporary file in the same folder, fsynced, renamed over `path`
// (and the folder fsynced), so readers see the old file or the complete new one. Creates missing folders.
void write_bytes_atomic(const std::filesystem::path& path, const void* data, std::size_t size);
void write_text_atomic(const std::filesystem::path& path, const std::string& text);

// CRC-32 (zlib) of a file's bytes: what adapter descriptions record to catch a changed artifact.
uint32_t file_crc32(const std::filesystem::path& path);

// The artifact file `path` names (a trained tokenizer, VAE, k-means codebook, vocoder): `path` resolved
// against `base_dir` when relative (and base_dir is not empty), or `default_name` inside it when it is a
// folder (a run directory).
std::filesystem::path resolve_artifact(const std::filesystem::path& path, const std::filesystem::path& base_dir,
                                       const std::string& default_name);

}  // namespace tessera
