// `tessera prepare`: a corpus -> an adapter -> memory-mapped shards plus index.json (ARCHITECTURE §2).
// With `pairs`, media-text pairs instead (image-caption, audio-transcript; modalities/pairs.h): the
// text adapter encodes the texts, a media adapter the images or audio, and each pair becomes one or two
// mixed-modal documents in one id space (layout_for of both adapters).
// Streams its inputs (never the whole corpus in memory), writes every shard atomically and the index
// last, so an interrupted run leaves nothing a loader would accept; re-running with the same inputs and
// settings is a no-op.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "core/data/shard.h"
#include "modalities/pairs.h"
#include "modalities/text/corpus.h"
#include "modalities/text_bpe/sentencepiece_adapter.h"

namespace tessera {

struct PrepareConfig {
  CorpusConfig corpus;            // a text corpus, or:
  PairsConfig pairs;              // media-text pairs (exactly one of the two)
  std::string adapter = "bytes";  // the text adapter: bytes | bpe
  std::string bpe_model;          // an existing SentencePiece .model for `bpe`; empty: train one here
  SentencePieceTrainConfig bpe;   // how to train it (on the training split only)
  int64_t bpe_train_bytes = 64 << 20;  // text sampled (from the start of the training split) to train BPE
  double val_fraction = 0.05;
  int64_t shard_tokens = 16 << 20;
  int64_t seed = 0;

  template <class V>
  void fields(V& v) {
    v.optional("corpus", corpus, "the text corpus to read (or give pairs)");
    v.choice("adapter", adapter, {"bytes", "bpe"}, "bytes (BLT's 260 ids) or SentencePiece BPE");
    v.optional("bpe_model", bpe_model, "existing SentencePiece .model to use (empty: train one from the corpus)");
    v.optional("bpe", bpe, "SentencePiece training settings");
    v.optional("bpe_train_bytes", bpe_train_bytes, "bytes of training text the BPE model is trained on");
    v.optional("val_fraction", val_fraction, "share of documents held out for validation (hash of the document number)");
    v.optional("shard_tokens", shard_tokens, "tokens per shard file (documents never split)");
    v.optional("seed", seed, "seed of the train/validation assignment and BPE training");
    v.optional("pairs", pairs, "media-text pairs (image-caption, audio-transcript) instead of a text corpus");
  }
  // Whether there is anything to prepare (a corpus or a pairs source).
  bool has_inputs() const { return !corpus.inputs.empty() || pairs.enabled(); }
};

struct PrepareResult {
  std::filesystem::path dir;
  DatasetIndex index;
  bool up_to_date = false;  // nothing was done
  double seconds = 0;
};

// Prepares `config` into `out_dir`. An existing dataset made from the same inputs and settings is left
// as it is; one made from different ones is an error unless `force`. `recipe_dir` resolves relative inputs.
// `media_adapter`, when given, is used instead of building pairs.media_adapter (tests, callers holding
// one already); its describe() is recorded and fingerprinted all the same.
PrepareResult prepare_dataset(const PrepareConfig& config, const std::filesystem::path& out_dir,
                              const std::string& recipe_dir = "", bool force = false, bool quiet = false,
                              std::shared_ptr<const Adapter> media_adapter = nullptr);

// The fingerprint recorded in index.json: settings plus every input file's path, size and mtime (for
// pairs also the media adapter's describe(), whose checksum changes when its model is retrained). A
// text-only config has the fingerprint it had before pairs existed.
std::string prepare_fingerprint(const PrepareConfig& config, const std::vector<CorpusFile>& files);

}  // namespace tessera
