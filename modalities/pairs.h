// Media-text pairs for mixed-modal `prepare` (issues 5 and 6): image-caption and audio-transcript
// pairs from a source (generated scenes, Fashion-MNIST, a user's captions file, a speech manifest),
// read one item at a time in a fixed order, and the document layout they become:
//
//   text_first:   <bos> text <boi> image ids <eoi> <eos>       (audio: <boa> ... <eoa>)
//   media_first:  <bos> <boi> image ids <eoi> text <eos>
//
// Continuous media (an adapter with vocab_size 0) put one <latent> placeholder per latent row between
// the delimiters; the latents go to a sidecar per shard (core/data/latents.h).
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/data/sample.h"
#include "modalities/image/captions.h"
#include "modalities/image/idx.h"
#include "modalities/image/scenes.h"

namespace tessera {

struct FashionMnistPairsConfig {
  std::string dir = image::kFashionMnistDir;
  std::string split = "train";

  template <class V>
  void fields(V& v) {
    v.optional("dir", dir, "folder with the IDX files (Debian package dataset-fashion-mnist)");
    v.choice("split", split, {"train", "test"}, "train (60000 images) or test (10000)");
  }
};

struct SpeechPairsConfig {
  std::string manifest;

  template <class V>
  void fields(V& v) {
    v.required("manifest", manifest, "path<TAB>transcript TSV or {audio, text} JSONL (speech_corpus.h)");
  }
};

struct PairsConfig {
  std::string source = "none";  // none: no pairs (a text corpus); scenes | fashion_mnist | captions | speech
  int64_t count = 0;
  image::SceneConfig scenes;
  image::CaptionsConfig captions;
  FashionMnistPairsConfig fashion_mnist;
  SpeechPairsConfig speech;
  int64_t captions_per_item = 1;
  std::string order = "both";
  YAML::Node media_adapter;  // an adapter description for make_adapter ({type: image_vq, model: ...})
  bool skip_bad = false;

  bool enabled() const { return source != "none"; }

  template <class V>
  void fields(V& v) {
    v.choice("source", source, {"none", "scenes", "fashion_mnist", "captions", "speech"},
             "where the pairs come from (none: prepare a text corpus instead)");
    v.optional("count", count, "scenes: how many images (indices 0..count-1); others: most items read (0: all)");
    v.optional("scenes", scenes, "source scenes: the generator's settings");
    v.optional("captions", captions, "source captions: a captions file over a folder of images");
    v.optional("fashion_mnist", fashion_mnist, "source fashion_mnist: where and which split");
    v.optional("speech", speech, "source speech: the manifest of audio files and transcripts");
    v.optional("captions_per_item", captions_per_item,
               "captions (transcripts) of an item that make documents, rotating through its list (0: all)");
    v.choice("order", order, {"text_first", "media_first", "both", "random"},
             "text before media, media before text, one document of each, or one seeded choice per pair");
    v.raw("media_adapter", media_adapter, false,
          "the media adapter as make_adapter takes it: {type: image_vq | image_latent | ..., model: PATH}");
    v.optional("skip_bad", skip_bad, "skip (and count) undecodable images/audio instead of stopping");
  }
};

// The Segment modality a source delivers: "image" or "audio".
std::string pairs_media_modality(const std::string& source);

// Checks the settings that parsing cannot (count, captions_per_item, the source's own config).
void validate(const PairsConfig& config);

// One item of a source: a media payload with the texts chosen for it (captions_per_item of its
// captions, starting at a rotation given by its number, so that scenes use all their paraphrases).
struct MediaItem {
  int64_t number = 0;  // position in the source, skipped items included: the train/val split hashes it
  std::string id;      // where it came from, for messages ("scene 17", "caps.tsv:3 (img/a.png)")
  Segment media;       // image (uint8 C×H×W) or audio (float [T], 16 kHz); empty when read without media
  std::vector<std::string> texts;
};

struct SkippedItems {
  int64_t count = 0;
  std::vector<std::string> examples;  // the first few errors, each naming the file
};

// The files a source reads (the manifest or captions file, then every media file), for the
// fingerprint; scenes read none.
std::vector<std::string> pairs_input_files(const PairsConfig& config, const std::string& recipe_dir);

// Streams the items of `config`'s source to `fn` in a fixed order; `fn` returns false to stop.
// `with_media` false reads only the texts (BPE training). A missing or undecodable image or audio file
// is an error naming it, or, with skip_bad, left out and counted in `skipped`. Relative paths not found
// from the working directory are looked up under `recipe_dir`.
void for_each_pair_item(const PairsConfig& config, const std::string& recipe_dir, bool with_media,
                        const std::function<bool(MediaItem&&)>& fn, SkippedItems* skipped = nullptr);

// One pair's document in model ids (see the top of this file); `begin`/`end` are the media's delimiters.
std::vector<int64_t> pair_document(const std::vector<int64_t>& text, const std::vector<int64_t>& media,
                                   bool text_first, int64_t bos, int64_t eos, int64_t begin, int64_t end);

}  // namespace tessera
