// A fresh scratch folder per test, deleted afterwards; shared by the test suites.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "core/io/files.h"

namespace tessera::test {

struct ScratchDir {
  const std::filesystem::path path;

  explicit ScratchDir(const std::string& name = "scratch")
      : path(std::filesystem::temp_directory_path() /
             ("tessera_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++))) {
    remove_tree(path);
    std::filesystem::create_directories(path);
  }
  ~ScratchDir() { remove_tree(path); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

 private:
  static inline int counter_ = 0;
};

}  // namespace tessera::test
