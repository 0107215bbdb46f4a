// Small file-system helpers shared by every layer.
#pragma once

#include <filesystem>
#include <system_error>

namespace tessera {

// Deletes `path` and everything below it (no error if it does not exist); symlinks are removed, not
// followed. Use it instead of std::filesystem::remove_all: the torch wheel's libraries export their
// own copies of libstdc++'s filesystem functions, and on some toolchains calls to remove_all bind to
// a copy that crashes on non-empty folders.
void remove_tree(const std::filesystem::path& path);
void remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept;

}  // namespace tessera
