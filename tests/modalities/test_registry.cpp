#include <gtest/gtest.h>

#include "core/error.h"
#include "modalities/bytes/bytes_adapter.h"
#include "modalities/registry.h"
#include "modalities/text_bpe/sentencepiece_adapter.h"
#include "modalities_test_util.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

using testing::shared_bpe_model;
using testing::contains;
using testing::TempDir;
using testing::what_of;

const std::string kText = "The old library opens a letter from the city.\n  Twice, in 1987!";

TEST(Registry, BytesLayoutIsBltExactly) {
  const auto bytes = make_adapter({{"type", "bytes"}}, {});
  EXPECT_EQ(bytes->name(), "bytes");
  const VocabLayout layout = layout_for({bytes});
  EXPECT_EQ(layout, VocabLayout::bytes());

  // BLT's released ids: <boe>/pad 0, <bos> 1, <eos> 2, <delim> 3, byte b -> b + 4.
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<int64_t> ids = to_model_ids(bytes->encode(Segment::of_text(all)), *bytes, layout);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b + 4);

  // Decoding drops the specials around a document.
  std::vector<int64_t> doc = {layout.special_id("<bos>")};
  const auto text_ids = to_model_ids(bytes->encode(Segment::of_text(kText)), *bytes, layout);
  doc.insert(doc.end(), text_ids.begin(), text_ids.end());
  doc.push_back(layout.special_id("<eos>"));
  EXPECT_EQ(bytes->decode(from_model_ids(doc, *bytes, layout)).text, kText);
}

TEST(Registry, SentencePieceRoundTripsThroughItsDescription) {
  TempDir dir;
  fs::copy_file(shared_bpe_model(), dir / "tok.model");
  const SentencePieceAdapter original("tok.model", dir.path());
  const nlohmann::json d = original.describe();
  EXPECT_EQ(d.at("type"), "sentencepiece");
  EXPECT_EQ(d.at("model"), "tok.model");  // as given: stays relative to its base folder
  EXPECT_EQ(d.at("vocab_size"), original.vocab_size());
  EXPECT_EQ(d.at("crc32"), original.crc32());

  // Through JSON text, as a shard index or checkpoint stores it.
  const auto rebuilt = make_adapter(nlohmann::json::parse(d.dump()), dir.path());
  EXPECT_EQ(rebuilt->name(), "text_bpe");
  EXPECT_EQ(rebuilt->describe(), d);
  const Segment segment = Segment::of_text(kText);
  EXPECT_EQ(rebuilt->encode(segment).ids, original.encode(segment).ids);

  // A relative path is looked up in base_dir, and the error says where it looked.
  const std::string message = what_of([&] { make_adapter(d, dir / "elsewhere"); });
  EXPECT_TRUE(contains(message, (dir / "elsewhere" / "tok.model").string())) << message;
}

TEST(Registry, ChangedModelIsAnError) {
  TempDir dir;
  fs::copy_file(shared_bpe_model(), dir / "tok.model");
  nlohmann::json d = SentencePieceAdapter("tok.model", dir.path()).describe();
  d["crc32"] = d.at("crc32").get<uint32_t>() ^ 1u;
  EXPECT_TRUE(contains(what_of([&] { make_adapter(d, dir.path()); }), "changed"));
  d = SentencePieceAdapter("tok.model", dir.path()).describe();
  d["vocab_size"] = d.at("vocab_size").get<int64_t>() + 1;
  EXPECT_THROW(make_adapter(d, dir.path()), Error);
  // Without the recorded checks (a recipe names just the model), it loads.
  EXPECT_NO_THROW(make_adapter({{"type", "sentencepiece"}, {"model", "tok.model"}}, dir.path()));
}

TEST(Registry, UnknownTypeListsTheKnownOnes) {
  const std::string message = what_of([] { make_adapter({{"type", "wordpiece"}}, {}); });
  EXPECT_TRUE(contains(message, "wordpiece")) << message;
  for (const auto& type : adapter_types()) EXPECT_TRUE(contains(message, type)) << message;
  EXPECT_EQ(adapter_types(),
            (std::vector<std::string>{"bytes", "sentencepiece", "image_vq", "image_latent", "speech_units"}));
  EXPECT_THROW(make_adapter(nlohmann::json::array(), {}), Error);
  EXPECT_THROW(make_adapter({{"model", "x.model"}}, {}), Error);
  EXPECT_THROW(make_adapter({{"type", "sentencepiece"}}, {}), Error);  // no model path
}

TEST(Registry, MixedLayoutPlacesRangesAfterTheSpecials) {
  const auto bpe = std::make_shared<const SentencePieceAdapter>(shared_bpe_model());
  const auto bytes = std::make_shared<const BytesAdapter>();
  const VocabLayout layout = layout_for({bpe, bytes});
  EXPECT_EQ(layout.specials(), (std::vector<std::string>{"<pad>", "<bos>", "<eos>"}));
  ASSERT_EQ(layout.modalities().size(), 2u);
  EXPECT_EQ(layout.modality("text_bpe"), (ModalityRange{"text_bpe", 3, bpe->vocab_size()}));
  EXPECT_EQ(layout.modality("bytes"), (ModalityRange{"bytes", 3 + bpe->vocab_size(), 256}));
  EXPECT_EQ(layout.size(), 3 + bpe->vocab_size() + 256);
  EXPECT_EQ(layout_for({bpe}).modality("text_bpe").offset, 3);

  // A document mixing both adapters, between specials: each adapter decodes only its own range.
  const auto bpe_ids = to_model_ids(bpe->encode(Segment::of_text(kText)), *bpe, layout);
  const auto byte_ids = to_model_ids(bytes->encode(Segment::of_text("\xff raw")), *bytes, layout);
  for (const int64_t id : bpe_ids) EXPECT_TRUE(id >= 3 && id < 3 + bpe->vocab_size());
  std::vector<int64_t> doc = {layout.special_id("<bos>")};
  doc.insert(doc.end(), bpe_ids.begin(), bpe_ids.end());
  doc.insert(doc.end(), byte_ids.begin(), byte_ids.end());
  doc.push_back(layout.special_id("<eos>"));
  EXPECT_EQ(bpe->decode(from_model_ids(doc, *bpe, layout)).text, kText);
  EXPECT_EQ(bytes->decode(from_model_ids(doc, *bytes, layout)).text, "\xff raw");
}

TEST(Registry, LayoutMismatchesAreErrors) {
  const auto bytes = std::make_shared<const BytesAdapter>();
  EXPECT_THROW(layout_for({}), Error);
  EXPECT_TRUE(contains(what_of([&] { layout_for({bytes, bytes}); }), "two adapters named 'bytes'"));
  const VocabLayout wrong({"<pad>"}, {{"bytes", 1, 100}});
  EXPECT_THROW(to_model_ids(bytes->encode(Segment::of_text("a")), *bytes, wrong), Error);
  const VocabLayout other({"<pad>"}, {{"image_vq", 1, 256}});
  EXPECT_THROW(from_model_ids({1, 2}, *bytes, other), Error);
  Span span;
  span.ids = {300};
  EXPECT_THROW(to_model_ids(span, *bytes, VocabLayout::bytes()), Error);
}

}  // namespace
}  // namespace tessera
