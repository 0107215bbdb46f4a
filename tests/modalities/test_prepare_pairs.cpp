// Mixed-modal `prepare`: image-caption pairs -> <bos> text <boi> image <eoi> <eos> documents (and the
// reverse order), continuous latents with placeholder tokens and sidecars, the captions-folder source
// with bad files, the layouts, and config errors.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/config.h"
#include "core/data/latents.h"
#include "core/error.h"
#include "core/io/safetensors.h"
#include "modalities/audio/audio_io.h"
#include "modalities/bytes/bytes_adapter.h"
#include "modalities/image/image_io.h"
#include "modalities/image_vq/vq_tokenizer.h"
#include "modalities/prepare.h"
#include "modalities/registry.h"
#include "temp_dir.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

struct Dir : test::ScratchDir {
  Dir() : test::ScratchDir("prepare_pairs") {}
};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a tessera::Error";
  return "";
}

// Test-only discrete image adapter: the image shrunk to 4×4 grey, quantised to `levels` levels -> 16 ids.
class GreyGridAdapter final : public Adapter {
 public:
  explicit GreyGridAdapter(int64_t levels = 16) : levels_(levels) {}
  std::string name() const override { return "test_grey"; }
  std::string modality() const override { return modality::kImage; }
  int64_t vocab_size() const override { return levels_; }
  Span encode(const Segment& segment) const override {
    const at::Tensor grey = image::resize(segment.tensor, 4, 4).to(at::kFloat).mean(0);  // [4, 4] in 0..255
    const at::Tensor q = (grey * static_cast<double>(levels_) / 256.0).floor().clamp(0, levels_ - 1).to(at::kLong);
    Span span;
    span.modality = modality::kImage;
    span.ids.assign(q.data_ptr<int64_t>(), q.data_ptr<int64_t>() + 16);
    return span;
  }
  Segment decode(const Span& span) const override {
    Segment s;
    s.modality = modality::kImage;
    s.tensor = (at::tensor(span.ids, at::kLong) * (256 / levels_)).to(at::kByte).view({1, 4, 4});
    return s;
  }
  nlohmann::json describe() const override { return {{"type", "test_grey"}, {"levels", levels_}}; }

 private:
  int64_t levels_;
};

// Test-only continuous image adapter: the mean colour of each of 4 horizontal bands -> latents [4, 3].
class BandColourAdapter final : public Adapter {
 public:
  std::string name() const override { return "test_bands"; }
  std::string modality() const override { return modality::kImage; }
  int64_t vocab_size() const override { return 0; }
  Span encode(const Segment& segment) const override {
    const at::Tensor x = segment.tensor.to(at::kFloat) / 255.0;  // [3, H, W]
    Span span;
    span.modality = modality::kImage;
    span.latents = at::stack(x.chunk(4, 1), 0).mean({2, 3}).contiguous();  // [4 bands, 3 channels]
    return span;
  }
  Segment decode(const Span&) const override { fail("test_bands: no decoder"); }
  nlohmann::json describe() const override { return {{"type", "test_bands"}, {"latent_dim", 3}, {"bands", 4}}; }
};

PrepareConfig scenes_config(int64_t count, const std::string& order = "both") {
  PrepareConfig c;
  c.adapter = "bytes";
  c.val_fraction = 0.3;
  c.shard_tokens = 400;  // several shards
  c.pairs.source = "scenes";
  c.pairs.count = count;
  c.pairs.scenes.size = 32;
  c.pairs.order = order;
  return c;
}

// Every document of a split, as token lists.
std::vector<std::vector<int64_t>> documents(const fs::path& dir, const DatasetIndex& index, const std::string& split) {
  const auto s = ShardedSplit::open(dir, index, split, true);
  std::vector<int64_t> tokens(static_cast<size_t>(s->size())), doc(static_cast<size_t>(s->size()));
  if (s->size() > 0) s->read(0, s->size(), tokens.data(), doc.data());
  std::vector<std::vector<int64_t>> out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i == 0 || doc[i] != doc[i - 1]) out.emplace_back();
    out.back().push_back(tokens[i]);
  }
  return out;
}

TEST(PreparePairs, ScenesDocumentsHaveTheExactLayoutInBothOrders) {
  Dir d;
  const PrepareConfig c = scenes_config(12);
  const auto grey = std::make_shared<GreyGridAdapter>();
  prepare_dataset(c, d.path / "ds", "", false, true, grey);
  const DatasetIndex index = DatasetIndex::load(d.path / "ds");

  // <pad> <bos> <eos> <boi> <eoi>, then bytes, then the image ids.
  EXPECT_EQ(index.layout.specials(), (std::vector<std::string>{"<pad>", "<bos>", "<eos>", "<boi>", "<eoi>"}));
  const ModalityRange text = index.layout.modality("bytes"), img = index.layout.modality("test_grey");
  EXPECT_EQ(text.offset, 5);
  EXPECT_EQ(img.offset, 5 + 256);
  EXPECT_EQ(img.size, 16);
  ASSERT_EQ(index.adapters.size(), 2u);
  EXPECT_EQ(index.adapters[0], BytesAdapter().describe());
  EXPECT_EQ(index.adapters[1], grey->describe());

  // What each scene's two documents must be, token for token.
  BytesAdapter bytes;
  std::map<std::vector<int64_t>, int64_t> expected;  // document -> scene
  int64_t text_bytes = 0;
  for (int64_t i = 0; i < c.pairs.count; ++i) {
    const image::Scene scene = image::generate_scene(c.pairs.scenes, i);
    const std::string& caption = scene.captions[static_cast<size_t>(i) % scene.captions.size()];  // rotation
    std::vector<int64_t> t, m;
    for (unsigned char ch : caption) t.push_back(5 + ch);
    for (int64_t id : grey->encode(Segment{modality::kImage, "", scene.image, 0}).ids) m.push_back(261 + id);
    std::vector<int64_t> text_first = {1}, media_first = {1, 3};
    text_first.insert(text_first.end(), t.begin(), t.end());
    text_first.push_back(3);
    text_first.insert(text_first.end(), m.begin(), m.end());
    text_first.insert(text_first.end(), {4, 2});
    media_first.insert(media_first.end(), m.begin(), m.end());
    media_first.push_back(4);
    media_first.insert(media_first.end(), t.begin(), t.end());
    media_first.push_back(2);
    expected[text_first] = i;
    expected[media_first] = i;
    text_bytes += 2 * static_cast<int64_t>(caption.size());
  }

  // Each expected document exactly once; both of a scene's documents in one split; text decodes back.
  std::map<int64_t, std::set<std::string>> splits_of_scene;
  size_t found = 0;
  for (const char* split : {"train", "val"}) {
    for (const auto& doc : documents(d.path / "ds", index, split)) {
      const auto it = expected.find(doc);
      ASSERT_NE(it, expected.end()) << "unexpected document in " << split;
      splits_of_scene[it->second].insert(split);
      ++found;
      const std::string decoded = bytes.decode(from_model_ids(doc, bytes, index.layout)).text;
      const image::Scene scene = image::generate_scene(c.pairs.scenes, it->second);
      EXPECT_EQ(decoded, scene.captions[static_cast<size_t>(it->second) % scene.captions.size()]);
    }
  }
  EXPECT_EQ(found, expected.size());
  for (const auto& [scene, splits] : splits_of_scene) EXPECT_EQ(splits.size(), 1u) << "scene " << scene;
  EXPECT_GT(index.split("val").docs, 0);
  EXPECT_GT(index.split("train").shards.size(), 1u);
  // Bits per byte counts the captions' bytes only.
  EXPECT_EQ(index.split("train").bytes + index.split("val").bytes, text_bytes);
  const nlohmann::json& tokens = index.source.at("pairs").at("tokens");
  EXPECT_EQ(tokens.at("image").get<int64_t>(), 24 * 16);
  EXPECT_EQ(tokens.at("text").get<int64_t>(), text_bytes);
  EXPECT_EQ(tokens.at("special").get<int64_t>(), 24 * 4);
  EXPECT_EQ(index.source.at("pairs").at("items").get<int64_t>(), 12);
}

TEST(PreparePairs, OneOrderAndRandomOrderMakeOneDocumentPerPair) {
  Dir d;
  const auto grey = std::make_shared<GreyGridAdapter>();
  int64_t text_first_docs = 0;
  for (const std::string order : {"text_first", "media_first", "random"}) {
    PrepareConfig c = scenes_config(16, order);
    c.pairs.captions_per_item = 2;
    prepare_dataset(c, d.path / order, "", false, true, grey);
    const DatasetIndex index = DatasetIndex::load(d.path / order);
    EXPECT_EQ(index.split("train").docs + index.split("val").docs, 32) << order;
    int64_t first = 0, total = 0;
    for (const char* split : {"train", "val"})
      for (const auto& doc : documents(d.path / order, index, split)) {
        first += doc[1] != 3;  // <bos> then text
        ++total;
      }
    if (order == "text_first") {
      EXPECT_EQ(first, total);
    }
    if (order == "media_first") {
      EXPECT_EQ(first, 0);
    }
    if (order == "random") text_first_docs = first;
  }
  EXPECT_GT(text_first_docs, 4);  // a seeded coin per pair: both orders occur
  EXPECT_LT(text_first_docs, 28);
}

TEST(PreparePairs, DeterministicUpToDateAndStrictAboutChanges) {
  Dir d;
  const PrepareConfig c = scenes_config(10);
  const auto grey = std::make_shared<GreyGridAdapter>();
  prepare_dataset(c, d.path / "a", "", false, true, grey);
  prepare_dataset(c, d.path / "b", "", false, true, grey);
  const DatasetIndex a = DatasetIndex::load(d.path / "a"), b = DatasetIndex::load(d.path / "b");
  EXPECT_EQ(a.source.at("fingerprint"), b.source.at("fingerprint"));
  EXPECT_EQ(a.to_json().at("splits"), b.to_json().at("splits"));  // same shards, same CRC-32s

  // Up to date: nothing is rewritten.
  const auto mtime = fs::last_write_time(d.path / "a" / "index.json");
  EXPECT_TRUE(prepare_dataset(c, d.path / "a", "", false, true, grey).up_to_date);
  EXPECT_EQ(fs::last_write_time(d.path / "a" / "index.json"), mtime);

  // Other pair settings, or a retrained media adapter (its describe() changes): an error without --force.
  PrepareConfig other = c;
  other.pairs.order = "text_first";
  const std::string message = error_of([&] { prepare_dataset(other, d.path / "a", "", false, true, grey); });
  EXPECT_TRUE(contains(message, "prepared from other inputs or settings")) << message;
  EXPECT_TRUE(contains(message, "--force")) << message;
  EXPECT_THROW(prepare_dataset(c, d.path / "a", "", false, true, std::make_shared<GreyGridAdapter>(8)), Error);
  EXPECT_FALSE(prepare_dataset(other, d.path / "a", "", true, true, grey).up_to_date);
  EXPECT_TRUE(prepare_dataset(other, d.path / "a", "", false, true, grey).up_to_date);
}

TEST(PreparePairs, ContinuousLatentsGoToSidecarsBesideThePlaceholders) {
  Dir d;
  PrepareConfig c = scenes_config(9);
  c.val_fraction = 0;  // one split, in scene order
  c.shard_tokens = 150;
  const auto bands = std::make_shared<BandColourAdapter>();
  prepare_dataset(c, d.path / "ds", "", false, true, bands);
  const DatasetIndex index = DatasetIndex::load(d.path / "ds");
  EXPECT_EQ(index.layout.specials(),
            (std::vector<std::string>{"<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", kLatentSpecial}));
  EXPECT_EQ(index.layout.modalities().size(), 1u);  // only the text takes a range
  const int64_t latent = index.layout.special_id(kLatentSpecial);
  EXPECT_EQ(index.source.at("latents").at("dim").get<int64_t>(), 3);
  EXPECT_EQ(index.source.at("latents").at("adapter"), bands->describe());

  // Each document: <boi>, 4 placeholders, <eoi>.
  for (const auto& doc : documents(d.path / "ds", index, "train")) {
    const auto boi = std::find(doc.begin(), doc.end(), 3) - doc.begin();
    ASSERT_LT(boi + 5, static_cast<long>(doc.size()));
    for (int k = 1; k <= 4; ++k) EXPECT_EQ(doc[static_cast<size_t>(boi + k)], latent);
    EXPECT_EQ(doc[static_cast<size_t>(boi + 5)], 4);
    EXPECT_EQ(std::count(doc.begin(), doc.end(), latent), 4);
  }

  // The sidecars hold exactly the adapter's latents, twice per scene (both orders), in order.
  const SplitInfo& train = index.split("train");
  ASSERT_GT(train.shards.size(), 2u);
  std::vector<at::Tensor> got;
  for (size_t s = 0; s < train.shards.size(); ++s) {
    ASSERT_TRUE(fs::exists(d.path / "ds" / latents_file_name(train.shards[s].file)));
    got.push_back(read_shard_latents(d.path / "ds", index, "train", static_cast<int64_t>(s)));
  }
  std::vector<at::Tensor> want;
  for (int64_t i = 0; i < c.pairs.count; ++i) {
    const at::Tensor l = bands->encode(Segment{modality::kImage, "", image::generate_scene(c.pairs.scenes, i).image, 0}).latents;
    want.push_back(l);
    want.push_back(l);
  }
  EXPECT_TRUE(at::equal(at::cat(got, 0), at::cat(want, 0)));

  // A sidecar that disagrees with its shard is an error naming it.
  const fs::path first = d.path / "ds" / latents_file_name(train.shards[0].file);
  io::save_safetensors(first, {{"latents", at::zeros({1, 3})}});
  const std::string bad = error_of([&] { read_shard_latents(d.path / "ds", index, "train", 0); });
  EXPECT_TRUE(contains(bad, first.string()) && contains(bad, "placeholders")) << bad;

  // The LM path refuses the dataset unless told otherwise.
  const std::string refused = error_of([&] {
    reject_latent_placeholders(index, d.path / "ds", false, "data.allow_latent_placeholders");
  });
  EXPECT_TRUE(contains(refused, "Transfusion") && contains(refused, "data.allow_latent_placeholders")) << refused;
  EXPECT_NO_THROW(reject_latent_placeholders(index, d.path / "ds", true, "x"));
}

TEST(PreparePairs, CaptionsFolderStopsAtABadImageOrSkipsIt) {
  if (!image::can_decode()) GTEST_SKIP() << "this build decodes no images (no OpenCV)";
  Dir d;
  const fs::path images = d.path / "images";
  std::ofstream tsv(d.path / "captions.tsv");
  tsv << "path\tcaption\n";
  image::SceneConfig scenes;
  scenes.size = 32;
  for (int i = 0; i < 6; ++i) {
    const std::string name = "img" + std::to_string(i) + ".png";
    image::write_png(images / name, image::generate_scene(scenes, i).image);
    tsv << "images/" << name << "\tpicture number " << i << "\n";
    tsv << "images/" << name << "\tanother caption of " << i << "\n";  // two captions: one item
  }
  tsv.close();
  const fs::path broken = images / "img3.png";
  fs::resize_file(broken, fs::file_size(broken) / 2);

  PrepareConfig c;
  c.pairs.source = "captions";
  c.pairs.captions.file = "captions.tsv";  // relative: found under the recipe folder
  c.pairs.captions_per_item = 0;           // all captions
  c.val_fraction = 0.2;
  const auto grey = std::make_shared<GreyGridAdapter>();
  const std::string message = error_of([&] { prepare_dataset(c, d.path / "ds", d.path.string(), false, true, grey); });
  EXPECT_TRUE(contains(message, "img3.png")) << message;
  EXPECT_TRUE(contains(message, "skip_bad")) << message;
  EXPECT_FALSE(fs::exists(d.path / "ds" / "index.json"));

  c.pairs.skip_bad = true;
  prepare_dataset(c, d.path / "ds", d.path.string(), false, true, grey);
  const DatasetIndex index = DatasetIndex::load(d.path / "ds");
  const nlohmann::json& pairs = index.source.at("pairs");
  EXPECT_EQ(pairs.at("skipped").at("count").get<int64_t>(), 1);
  EXPECT_TRUE(contains(pairs.at("skipped").at("examples").at(0).get<std::string>(), "img3.png"));
  EXPECT_EQ(pairs.at("items").get<int64_t>(), 5);
  EXPECT_EQ(index.split("train").docs + index.split("val").docs, 5 * 2 * 2);  // 2 captions × 2 orders

  // The image files are inputs: editing one makes the dataset stale.
  image::write_png(broken, image::generate_scene(scenes, 3).image);
  fs::last_write_time(broken, fs::last_write_time(broken) + std::chrono::seconds(5));
  EXPECT_THROW(prepare_dataset(c, d.path / "ds", d.path.string(), false, true, grey), Error);
}

// Test-only discrete audio adapter: mean |x| of 8 equal frames, quantised to 8 levels -> 8 ids.
class EnergyAdapter final : public Adapter {
 public:
  std::string name() const override { return "test_energy"; }
  std::string modality() const override { return modality::kAudio; }
  int64_t vocab_size() const override { return 8; }
  Span encode(const Segment& segment) const override {
    const at::Tensor frames = segment.tensor.narrow(0, 0, segment.tensor.size(0) / 8 * 8).view({8, -1});
    const at::Tensor q = (frames.abs().mean(1) * 8).floor().clamp(0, 7).to(at::kLong).contiguous();
    Span span;
    span.modality = modality::kAudio;
    span.ids.assign(q.data_ptr<int64_t>(), q.data_ptr<int64_t>() + 8);
    return span;
  }
  Segment decode(const Span&) const override { fail("test_energy: no decoder"); }
  nlohmann::json describe() const override { return {{"type", "test_energy"}}; }
};

TEST(PreparePairs, SpeechManifestMakesAudioDocuments) {
  if (!audio::has_sndfile() && !audio::has_ffmpeg()) GTEST_SKIP() << "this build reads no audio files";
  Dir d;
  std::ofstream tsv(d.path / "train.tsv");
  tsv << "path\ttranscript\n";
  for (int i = 0; i < 6; ++i) {
    const at::Tensor t = at::arange(4000, at::kFloat) / 16000.0;
    audio::write_wav(d.path / "wav" / (std::to_string(i) + ".wav"), (t * 2 * M_PI * (200.0 + 100 * i)).sin() * (0.1 * (i + 1)), 16000);
    tsv << "wav/" << i << ".wav\tutterance number " << i << "\n";
  }
  std::ofstream(d.path / "wav" / "bad.wav") << "this is not a wave file";
  tsv << "wav/bad.wav\tunreadable\n";
  tsv.close();

  PrepareConfig c;
  c.pairs.source = "speech";
  c.pairs.speech.manifest = "train.tsv";
  c.pairs.order = "text_first";
  c.val_fraction = 0;
  const auto energy = std::make_shared<EnergyAdapter>();
  const std::string message = error_of([&] { prepare_dataset(c, d.path / "ds", d.path.string(), false, true, energy); });
  EXPECT_TRUE(contains(message, "bad.wav") && contains(message, "skip_bad")) << message;

  c.pairs.skip_bad = true;
  prepare_dataset(c, d.path / "ds", d.path.string(), false, true, energy);
  const DatasetIndex index = DatasetIndex::load(d.path / "ds");
  EXPECT_EQ(index.layout.specials(), (std::vector<std::string>{"<pad>", "<bos>", "<eos>", "<boa>", "<eoa>"}));
  EXPECT_EQ(index.source.at("pairs").at("skipped").at("count").get<int64_t>(), 1);
  const auto docs = documents(d.path / "ds", index, "train");
  ASSERT_EQ(docs.size(), 6u);
  const int64_t offset = index.layout.modality("test_energy").offset;
  for (size_t i = 0; i < docs.size(); ++i) {
    const std::string caption = "utterance number " + std::to_string(i);
    ASSERT_EQ(docs[i].size(), caption.size() + 8 + 4);
    EXPECT_EQ(docs[i][1 + caption.size()], 3);  // <boa> after the text
    EXPECT_EQ(docs[i][1 + caption.size() + 9], 4);
    const audio::Audio a = audio::read_audio(d.path / "wav" / (std::to_string(i) + ".wav"));
    const auto want = energy->encode(Segment{modality::kAudio, "", a.samples, 16000}).ids;
    for (size_t k = 0; k < 8; ++k) EXPECT_EQ(docs[i][2 + caption.size() + k], offset + want[k]);
  }
}

TEST(PreparePairs, BpeIsTrainedOnTheTrainingCaptions) {
  Dir d;
  PrepareConfig c = scenes_config(40);
  c.adapter = "bpe";
  c.bpe.vocab_size = 300;
  c.bpe.threads = 1;
  c.pairs.order = "text_first";
  const auto grey = std::make_shared<GreyGridAdapter>();
  prepare_dataset(c, d.path / "ds", "", false, true, grey);
  const DatasetIndex index = DatasetIndex::load(d.path / "ds");
  EXPECT_EQ(index.adapters.at(0).at("model"), "tokenizer.model");
  EXPECT_EQ(index.layout.modality("text_bpe").offset, 5);
  EXPECT_EQ(index.layout.modality("test_grey").offset, 5 + 300);
  // The recorded tokenizer decodes every document's text back to one of the scenes' captions.
  std::set<std::string> captions;
  for (int64_t i = 0; i < c.pairs.count; ++i) {
    const image::Scene scene = image::generate_scene(c.pairs.scenes, i);
    captions.insert(scene.captions[static_cast<size_t>(i) % scene.captions.size()]);
  }
  const auto text = make_adapter(index.adapters.at(0), d.path / "ds");
  int64_t docs = 0;
  for (const char* split : {"train", "val"})
    for (const auto& doc : documents(d.path / "ds", index, split)) {
      const std::string caption = text->decode(from_model_ids(doc, *text, index.layout)).text;
      EXPECT_EQ(captions.count(caption), 1u) << caption;
      ++docs;
    }
  EXPECT_EQ(docs, 40);
  // Shorter than bytes: the model was trained on these captions.
  EXPECT_LT(index.source.at("pairs").at("tokens").at("text").get<int64_t>(),
            index.split("train").bytes + index.split("val").bytes);
}

TEST(PreparePairs, LayoutsOfTextOnlyAndMixedAdapters) {
  struct Fake final : Adapter {
    std::string n, m;
    int64_t v;
    Fake(std::string name, std::string mod, int64_t vocab) : n(std::move(name)), m(std::move(mod)), v(vocab) {}
    std::string name() const override { return n; }
    std::string modality() const override { return m; }
    int64_t vocab_size() const override { return v; }
    Span encode(const Segment&) const override { return {}; }
    Segment decode(const Span&) const override { return {}; }
    nlohmann::json describe() const override { return {{"type", n}}; }
  };
  const auto bytes = std::make_shared<BytesAdapter>();
  const auto bpe = std::make_shared<Fake>("text_bpe", modality::kText, 300);
  const auto vq = std::make_shared<Fake>("image_vq", modality::kImage, 512);
  const auto latent = std::make_shared<Fake>("image_latent", modality::kImage, 0);
  const auto units = std::make_shared<Fake>("speech_units", modality::kAudio, 100);

  // Text-only layouts are what they were before media existed.
  EXPECT_EQ(layout_for({bytes}), VocabLayout::bytes());
  EXPECT_EQ(layout_for({bpe}), VocabLayout({"<pad>", "<bos>", "<eos>"}, {{"text_bpe", 3, 300}}));
  EXPECT_EQ(layout_for({bpe, bytes}),
            VocabLayout({"<pad>", "<bos>", "<eos>"}, {{"text_bpe", 3, 300}, {"bytes", 303, 256}}));
  // Media add their delimiters (and <latent> for continuous ones) before the ranges.
  EXPECT_EQ(layout_for({bpe, vq}),
            VocabLayout({"<pad>", "<bos>", "<eos>", "<boi>", "<eoi>"}, {{"text_bpe", 5, 300}, {"image_vq", 305, 512}}));
  EXPECT_EQ(layout_for({bpe, latent}),
            VocabLayout({"<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<latent>"}, {{"text_bpe", 6, 300}}));
  EXPECT_EQ(layout_for({bpe, units}).specials(), (std::vector<std::string>{"<pad>", "<bos>", "<eos>", "<boa>", "<eoa>"}));
  EXPECT_EQ(segment_delimiters(modality::kAudio), (std::pair<std::string, std::string>{"<boa>", "<eoa>"}));
  EXPECT_THROW(segment_delimiters(modality::kText), Error);
}

TEST(PreparePairs, ConfigErrorsSayWhatToFix) {
  const auto parse = [](const std::string& yaml) {
    return config::parse<PrepareConfig>(config::load_yaml_string(yaml, "recipe.yaml"), "data.prepare", "recipe.yaml");
  };
  std::string m = error_of([&] { parse("pairs: {source: scenes, count: 4, sorce: x}"); });
  EXPECT_TRUE(contains(m, "data.prepare.pairs.sorce") && contains(m, "did you mean")) << m;
  m = error_of([&] { parse("pairs: {source: photos}"); });
  EXPECT_TRUE(contains(m, "photos") && contains(m, "scenes") && contains(m, "captions")) << m;
  m = error_of([&] { parse("pairs: {source: scenes, scenes: {size: 32, colour: red}}"); });
  EXPECT_TRUE(contains(m, "data.prepare.pairs.scenes.colour")) << m;

  // A parsed config with nothing, both, or an incomplete pairs section.
  Dir d;
  const auto grey = std::make_shared<GreyGridAdapter>();
  m = error_of([&] { prepare_dataset(parse("adapter: bytes"), d.path / "ds", "", false, true); });
  EXPECT_TRUE(contains(m, "corpus.inputs") && contains(m, "pairs.source")) << m;
  m = error_of([&] { prepare_dataset(parse("pairs: {count: 4}"), d.path / "ds", "", false, true); });
  EXPECT_TRUE(contains(m, "no source")) << m;
  m = error_of([&] {
    prepare_dataset(parse("corpus: {inputs: [a.txt]}\npairs: {source: scenes, count: 4}"), d.path / "ds", "", false, true);
  });
  EXPECT_TRUE(contains(m, "both")) << m;
  m = error_of([&] { prepare_dataset(parse("pairs: {source: scenes}"), d.path / "ds", "", false, true, grey); });
  EXPECT_TRUE(contains(m, "pairs.count")) << m;
  m = error_of([&] { prepare_dataset(parse("pairs: {source: scenes, count: 4}"), d.path / "ds", "", false, true); });
  EXPECT_TRUE(contains(m, "media_adapter is required")) << m;
  m = error_of([&] {
    prepare_dataset(parse("pairs: {source: scenes, count: 4, media_adapter: {type: image_vk, model: x}}"),
                    d.path / "ds", "", false, true);
  });
  EXPECT_TRUE(contains(m, "image_vk") && contains(m, "image_vq")) << m;
  EXPECT_FALSE(fs::exists(d.path / "ds" / "index.json"));

  // A text-only config fingerprints exactly what it did before pairs existed: FNV-1a of its settings
  // without a pairs section (so datasets prepared earlier stay up to date).
  const PrepareConfig text = parse("corpus: {inputs: [a.txt]}\nadapter: bpe");
  nlohmann::json settings = config::to_json(text);
  settings.erase("pairs");
  const std::string old_form = nlohmann::json{{"settings", settings}, {"shard_format", kShardFormatVersion},
                                              {"dataset_format", kDatasetFormatVersion}}.dump();
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : old_form) h = (h ^ ch) * 1099511628211ULL;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  EXPECT_EQ(prepare_fingerprint(text, {}), hex);
}

TEST(PreparePairs, RealImageVqAdapterEndToEnd) {
  Dir d;
  image::VqTokenizerConfig vc;
  vc.image_size = 32;
  vc.model.net.channels = 8;
  vc.model.net.max_channels = 8;
  vc.model.net.downsample = 3;
  vc.model.codebook_size = 32;
  vc.model.code_dim = 4;
  image::save_vq_tokenizer(d.path / "vq" / "tokenizer.safetensors", image::VqTokenizerImpl(vc));

  const YAML::Node yaml = config::load_yaml_string(
      "pairs: {source: scenes, count: 6, scenes: {size: 32}, media_adapter: {type: image_vq, model: vq/tokenizer.safetensors}}\n"
      "val_fraction: 0.2\n",
      "recipe.yaml");
  const PrepareConfig c = config::parse<PrepareConfig>(yaml, "data.prepare", "recipe.yaml");
  prepare_dataset(c, d.path / "ds", d.path.string(), false, true);  // the model is found beside the recipe
  const DatasetIndex index = DatasetIndex::load(d.path / "ds");
  EXPECT_EQ(index.layout.modality("image_vq").offset, 5 + 256);
  EXPECT_EQ(index.layout.modality("image_vq").size, 32);
  ASSERT_EQ(index.adapters.size(), 2u);
  EXPECT_TRUE(fs::path(index.adapters[1].at("model").get<std::string>()).is_absolute());
  // The recorded adapter rebuilds (checksum included) and every document holds its 16 codes.
  const auto vq = make_adapter(index.adapters[1], d.path / "ds");
  for (const char* split : {"train", "val"})
    for (const auto& doc : documents(d.path / "ds", index, split))
      EXPECT_EQ(from_model_ids(doc, *vq, index.layout).ids.size(), 16u);
  // Retraining the tokenizer (another file) invalidates the shards.
  image::VqTokenizerConfig other = vc;
  other.model.code_dim = 8;
  image::save_vq_tokenizer(d.path / "vq" / "tokenizer.safetensors", image::VqTokenizerImpl(other));
  EXPECT_THROW(prepare_dataset(c, d.path / "ds", d.path.string(), false, true), Error);
}

}  // namespace
}  // namespace tessera
