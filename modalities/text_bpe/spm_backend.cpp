#include "modalities/text_bpe/spm_backend.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"

namespace tessera::spm {
namespace fs = std::filesystem;

namespace {

constexpr const char* kModuleName = "libtessera_spm.so";

fs::path executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

const Backend* load_backend() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("TESSERA_SPM_MODULE"); env && *env) candidates.emplace_back(env);
#ifdef TESSERA_SPM_MODULE_PATH
  candidates.emplace_back(TESSERA_SPM_MODULE_PATH);
#endif
  if (const fs::path dir = executable_dir(); !dir.empty()) {
    candidates.push_back((dir / kModuleName).string());
    candidates.push_back((dir.parent_path() / "modalities" / kModuleName).string());  // a moved build tree
  }
  candidates.emplace_back(kModuleName);  // rpath, LD_LIBRARY_PATH, system folders

  std::string tried;
  for (const auto& path : candidates) {
    // A bare name goes to the dynamic linker's search; a path is tried only if the file is there.
    std::error_code ec;
    if (path.find('/') != std::string::npos && !fs::exists(path, ec)) {
      tried += str("\n  ", path, ": not found");
      continue;
    }
    // RTLD_DEEPBIND: SentencePiece and its dependencies resolve their own symbols before the program's
    // (see spm_backend.h). RTLD_LOCAL: its symbols stay out of everyone else's lookups.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!handle) {
      const char* why = ::dlerror();
      tried += str("\n  ", path, ": ", why ? why : "cannot load");
      continue;
    }
    using Entry = const Backend* (*)();
    const auto entry = reinterpret_cast<Entry>(::dlsym(handle, TESSERA_SPM_ENTRY));
    if (!entry) {
      tried += str("\n  ", path, ": no ", TESSERA_SPM_ENTRY, " (a module from another Tessera version?)");
      ::dlclose(handle);
      continue;
    }
    return entry();  // the module stays loaded for the life of the process
  }
  fail("SentencePiece (text_bpe) is unavailable: cannot load ", kModuleName, "; tried:", tried,
       "\nbuild it (it is part of tessera_modalities; it needs libsentencepiece-dev) or set TESSERA_SPM_MODULE "
       "to its path");
}

}  // namespace

const Backend& backend() {
  static const Backend* const loaded = load_backend();  // a failure is retried on the next call
  return *loaded;
}

}  // namespace tessera::spm
