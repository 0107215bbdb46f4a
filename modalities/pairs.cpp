#include "modalities/pairs.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <utility>

#include "core/error.h"
#include "modalities/audio/audio_io.h"
#include "modalities/image/image_io.h"
#include "modalities/speech_units/speech_corpus.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

constexpr size_t kSkippedExamples = 10;

// A relative path as given when it exists from the working directory, else under the recipe's folder.
fs::path locate(const std::string& given, const std::string& recipe_dir) {
  const fs::path p(given);
  std::error_code ec;
  if (p.is_absolute() || recipe_dir.empty() || fs::exists(p, ec)) return p;
  const fs::path beside = fs::path(recipe_dir) / p;
  return fs::exists(beside, ec) ? beside : p;
}

// `per_item` of `all`, starting at a rotation by the item's number (0: all of them, in order).
std::vector<std::string> choose_texts(std::vector<std::string> all, int64_t number, int64_t per_item) {
  const auto n = static_cast<int64_t>(all.size());
  if (per_item == 0 || per_item >= n) return all;
  std::vector<std::string> chosen;
  for (int64_t j = 0; j < per_item; ++j) chosen.push_back(std::move(all[static_cast<size_t>((number + j) % n)]));
  return chosen;
}

Segment image_segment(at::Tensor image) {
  Segment s;
  s.modality = modality::kImage;
  s.tensor = image.contiguous();
  return s;
}

// Reads one media file for `item`; with skip_bad a failure is counted and false returned.
template <class Read>
bool read_media(const PairsConfig& config, MediaItem& item, SkippedItems* skipped, Read&& read) {
  try {
    item.media = read();
    return true;
  } catch (const Error& e) {
    if (!config.skip_bad)
      fail(item.id, ": ", e.what(), " (set prepare.pairs.skip_bad: true to skip undecodable files)");
    if (skipped) {
      ++skipped->count;
      if (skipped->examples.size() < kSkippedExamples) skipped->examples.push_back(item.id + ": " + e.what());
    }
    return false;
  }
}

// The captions file's pairs grouped by image (first appearance order), so that an image's captions are
// one item and land in one split.
struct CaptionGroup {
  std::string path, source;
  std::vector<std::string> captions;
};
std::vector<CaptionGroup> caption_groups(const PairsConfig& config, const std::string& recipe_dir) {
  std::vector<CaptionGroup> groups;
  std::map<std::string, size_t> where;
  for (auto& pair : image::read_captions(config.captions, recipe_dir)) {
    const auto [it, inserted] = where.emplace(pair.path, groups.size());
    if (inserted) groups.push_back({pair.path, pair.source, {}});
    groups[it->second].captions.push_back(std::move(pair.caption));
  }
  if (config.count > 0 && static_cast<int64_t>(groups.size()) > config.count) groups.resize(static_cast<size_t>(config.count));
  return groups;
}

std::vector<speech::SpeechTextEntry> speech_entries(const PairsConfig& config, const std::string& recipe_dir) {
  auto entries = speech::read_speech_manifest(locate(config.speech.manifest, recipe_dir));
  if (config.count > 0 && static_cast<int64_t>(entries.size()) > config.count) entries.resize(static_cast<size_t>(config.count));
  return entries;
}

}  // namespace

std::string pairs_media_modality(const std::string& source) {
  if (source == "scenes" || source == "fashion_mnist" || source == "captions") return modality::kImage;
  if (source == "speech") return modality::kAudio;
  fail("prepare.pairs.source '", source, "' has no media (expected scenes, fashion_mnist, captions or speech)");
}

void validate(const PairsConfig& config) {
  check(config.count >= 0, "prepare.pairs.count must be >= 0, got ", config.count);
  check(config.captions_per_item >= 0, "prepare.pairs.captions_per_item must be >= 0 (0: all), got ",
        config.captions_per_item);
  if (config.source == "scenes") {
    check(config.count > 0, "prepare.pairs.count must say how many scenes to generate (e.g. count: 20000)");
    image::validate(config.scenes);
  } else if (config.source == "captions") {
    check(!config.captions.file.empty(), "prepare.pairs.captions.file is required for source captions "
          "(a COCO captions .json, .jsonl or .tsv over your images)");
  } else if (config.source == "speech") {
    check(!config.speech.manifest.empty(), "prepare.pairs.speech.manifest is required for source speech "
          "(path<TAB>transcript lines or {audio, text} JSON lines)");
  }
}

std::vector<std::string> pairs_input_files(const PairsConfig& config, const std::string& recipe_dir) {
  std::vector<std::string> files;
  if (config.source == "captions") {
    files.push_back(locate(config.captions.file, recipe_dir).string());
    for (const auto& g : caption_groups(config, recipe_dir)) files.push_back(g.path);
  } else if (config.source == "speech") {
    files.push_back(locate(config.speech.manifest, recipe_dir).string());
    for (const auto& e : speech_entries(config, recipe_dir)) files.push_back(e.audio.string());
  } else if (config.source == "fashion_mnist") {
    const fs::path dir = locate(config.fashion_mnist.dir, recipe_dir);
    check(image::fashion_mnist_available(dir), "prepare.pairs.fashion_mnist.dir: no Fashion-MNIST files in ",
          dir.string(), " (install the Debian package dataset-fashion-mnist, or point dir at the IDX files)");
    const std::string prefix = config.fashion_mnist.split == "train" ? "train-" : "t10k-";
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.path().filename().string().rfind(prefix, 0) == 0) files.push_back(entry.path().string());
    std::sort(files.begin(), files.end());
  }
  return files;
}

void for_each_pair_item(const PairsConfig& config, const std::string& recipe_dir, bool with_media,
                        const std::function<bool(MediaItem&&)>& fn, SkippedItems* skipped) {
  validate(config);
  const int64_t per_item = config.captions_per_item;
  if (config.source == "scenes") {
    for (int64_t i = 0; i < config.count; ++i) {
      image::Scene scene = image::generate_scene(config.scenes, i);
      MediaItem item;
      item.number = i;
      item.id = "scene " + std::to_string(i);
      if (with_media) item.media = image_segment(scene.image);
      item.texts = choose_texts(std::move(scene.captions), i, per_item);
      if (!fn(std::move(item))) return;
    }
  } else if (config.source == "fashion_mnist") {
    const image::LabeledImages data =
        image::read_fashion_mnist(config.fashion_mnist.split, locate(config.fashion_mnist.dir, recipe_dir), config.count);
    const at::Tensor labels = data.labels.contiguous();
    for (int64_t i = 0; i < data.images.size(0); ++i) {
      MediaItem item;
      item.number = i;
      item.id = "fashion_mnist " + config.fashion_mnist.split + "[" + std::to_string(i) + "]";
      if (with_media) item.media = image_segment(data.images[i]);
      item.texts = choose_texts(image::fashion_mnist_captions(labels.data_ptr<int64_t>()[i]), i, per_item);
      if (!fn(std::move(item))) return;
    }
  } else if (config.source == "captions") {
    check(!with_media || image::can_decode(), "prepare.pairs.source captions: this build cannot decode image files "
          "(built without OpenCV); prepare on a machine with TESSERA_WITH_OPENCV=ON, or use source scenes or fashion_mnist");
    auto groups = caption_groups(config, recipe_dir);
    for (size_t i = 0; i < groups.size(); ++i) {
      MediaItem item;
      item.number = static_cast<int64_t>(i);
      item.id = groups[i].source + " (" + groups[i].path + ")";
      if (with_media && !read_media(config, item, skipped, [&] { return image_segment(image::read_image(groups[i].path)); }))
        continue;
      item.texts = choose_texts(std::move(groups[i].captions), item.number, per_item);
      if (!fn(std::move(item))) return;
    }
  } else if (config.source == "speech") {
    check(!with_media || audio::has_sndfile() || audio::has_ffmpeg(), "prepare.pairs.source speech: this build "
          "cannot read audio files (built without libsndfile and FFmpeg); prepare on a machine with "
          "TESSERA_WITH_SNDFILE or TESSERA_WITH_FFMPEG ON");
    const auto entries = speech_entries(config, recipe_dir);
    for (size_t i = 0; i < entries.size(); ++i) {
      MediaItem item;
      item.number = static_cast<int64_t>(i);
      item.id = entries[i].where + " (" + entries[i].audio.string() + ")";
      if (with_media && !read_media(config, item, skipped, [&] {
            const audio::Audio a = speech::load_speech_audio(entries[i], audio::kDefaultSampleRate);
            Segment s;
            s.modality = modality::kAudio;
            s.tensor = a.samples;
            s.sample_rate = a.sample_rate;
            return s;
          }))
        continue;
      item.texts = {entries[i].text};
      if (!fn(std::move(item))) return;
    }
  } else {
    fail("prepare.pairs.source is '", config.source, "': nothing to read (expected scenes, fashion_mnist, captions or speech)");
  }
}

std::vector<int64_t> pair_document(const std::vector<int64_t>& text, const std::vector<int64_t>& media,
                                   bool text_first, int64_t bos, int64_t eos, int64_t begin, int64_t end) {
  std::vector<int64_t> doc;
  doc.reserve(text.size() + media.size() + 4);
  doc.push_back(bos);
  const auto put_media = [&] {
    doc.push_back(begin);
    doc.insert(doc.end(), media.begin(), media.end());
    doc.push_back(end);
  };
  if (!text_first) put_media();
  doc.insert(doc.end(), text.begin(), text.end());
  if (text_first) put_media();
  doc.push_back(eos);
  return doc;
}

}  // namespace tessera
