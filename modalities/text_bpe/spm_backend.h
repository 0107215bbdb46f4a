// SentencePiece behind an interface, loaded from a small module of its own (libtessera_spm.so) with
// dlopen(RTLD_DEEPBIND) rather than linked into the program.
//
// Why: libsentencepiece defines a global `FLAGS_minloglevel` (an absl::Flag<int> object, 32 bytes) and
// so does LibTorch's libc10 (a plain int, followed by FLAGS_caffe2_use_fatal_for_enforce and more).
// Linked normally, libc10 comes first in the symbol lookup order, so SentencePiece's static constructor
// builds its Flag object on top of libc10's int and its neighbours: c10's log level becomes half a vtable
// pointer and use_fatal_for_enforce turns true (CAFFE_ENFORCE failures would abort), silently, on both
// the CPU and the GPU machine. Deep binding makes SentencePiece resolve its own symbols first; libc10
// keeps its own. Only plain C++ types cross the interface (virtual calls need no symbol lookup), with
// errors as text.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera::spm {

class Model {
 public:
  virtual ~Model() = default;
  virtual int size() const = 0;
  virtual int piece_to_id(std::string_view piece) const = 0;
  virtual std::string id_to_piece(int id) const = 0;
  virtual float score(int id) const = 0;
  virtual bool is_byte(int id) const = 0;
  virtual int unk_id() const = 0;
  // On failure: false, with the reason in *error.
  virtual bool encode(std::string_view text, std::vector<int>* ids, std::string* error) const = 0;
  virtual bool decode(const std::vector<int>& ids, std::string* text, std::string* error) const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // nullptr with the reason in *error when `serialized` is not a usable model.
  virtual std::unique_ptr<Model> load(std::string_view serialized, std::string* error) const = 0;
  // Trains on `lines` with SentencePiece `args` (key, value); the model's bytes go to *model.
  virtual bool train(const std::vector<std::pair<std::string, std::string>>& args,
                     const std::vector<std::string>& lines, unsigned seed, std::string* model,
                     std::string* error) const = 0;
};

// The backend, loading the module on first use (thread-safe). The module is looked up in
// $TESSERA_SPM_MODULE, then where the build put it, then beside the executable (and in ../modalities,
// for a moved build tree), then on the dynamic linker's search path; failing all, a tessera::Error
// lists what was tried.
const Backend& backend();

}  // namespace tessera::spm

// The module's one exported symbol.
#define TESSERA_SPM_ENTRY "tessera_spm_backend_v1"
