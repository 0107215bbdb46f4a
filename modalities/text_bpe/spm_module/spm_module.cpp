// libtessera_spm.so: SentencePiece behind tessera::spm::Backend (see spm_backend.h for why this is a
// module of its own). Built without LibTorch; exports only TESSERA_SPM_ENTRY.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <unordered_map>

#include "modalities/text_bpe/spm_backend.h"

namespace tessera::spm {
namespace {

class SpModel final : public Model {
 public:
  explicit SpModel(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp) : sp_(std::move(sp)) {}
  int size() const override { return sp_->GetPieceSize(); }
  int piece_to_id(std::string_view piece) const override { return sp_->PieceToId(piece); }
  std::string id_to_piece(int id) const override { return sp_->IdToPiece(id); }
  float score(int id) const override { return sp_->GetScore(id); }
  bool is_byte(int id) const override { return sp_->IsByte(id); }
  int unk_id() const override { return sp_->unk_id(); }
  bool encode(std::string_view text, std::vector<int>* ids, std::string* error) const override {
    return ok(sp_->Encode(text, ids), error);
  }
  bool decode(const std::vector<int>& ids, std::string* text, std::string* error) const override {
    return ok(sp_->Decode(ids, text), error);
  }

  static bool ok(const sentencepiece::util::Status& status, std::string* error) {
    if (status.ok()) return true;
    *error = status.message();
    return false;
  }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

class Lines final : public sentencepiece::SentenceIterator {
 public:
  explicit Lines(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return index_ >= lines_.size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return lines_[index_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& lines_;
  size_t index_ = 0;
};

class SpBackend final : public Backend {
 public:
  std::unique_ptr<Model> load(std::string_view serialized, std::string* error) const override {
    auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
    if (!SpModel::ok(sp->LoadFromSerializedProto(serialized), error)) return nullptr;
    return std::make_unique<SpModel>(std::move(sp));
  }

  bool train(const std::vector<std::pair<std::string, std::string>>& args, const std::vector<std::string>& lines,
             unsigned seed, std::string* model, std::string* error) const override {
    const std::unordered_map<std::string, std::string> kwargs(args.begin(), args.end());
    sentencepiece::SetRandomGeneratorSeed(seed);
    Lines it(lines);
    return SpModel::ok(sentencepiece::SentencePieceTrainer::Train(kwargs, &it, model), error);
  }
};

}  // namespace
}  // namespace tessera::spm

extern "C" __attribute__((visibility("default"))) const tessera::spm::Backend* tessera_spm_backend_v1() {
  static const tessera::spm::SpBackend backend;
  return &backend;
}
