#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <dlfcn.h>
#include <link.h>

#include <random>
#include <set>

#include "core/config.h"
#include "core/error.h"
#include "modalities/registry.h"
#include "modalities/text_bpe/sentencepiece_adapter.h"
#include "modalities/text_bpe/spm_backend.h"
#include "modalities_test_util.h"


namespace tessera {
namespace {
namespace fs = std::filesystem;

using testing::english_documents;
using testing::read_bytes;
using testing::shared_bpe_model;
using testing::small_bpe_config;
using testing::contains;
using testing::TempDir;
using testing::what_of;
using testing::write_bytes;

std::string round_trip(const Adapter& a, const std::string& text) {
  return a.decode(a.encode(Segment::of_text(text))).text;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

TEST(SentencePieceTrain, WritesAModelOfTheRequestedSize) {
  const SentencePieceAdapter a(shared_bpe_model());
  EXPECT_EQ(a.name(), "text_bpe");
  EXPECT_EQ(a.modality(), modality::kText);
  EXPECT_EQ(a.vocab_size(), small_bpe_config().vocab_size);

  // The .vocab beside it lists every piece; no temporary files are left behind.
  const fs::path vocab = fs::path(shared_bpe_model()).replace_extension(".vocab");
  const std::string listing = read_bytes(vocab);
  EXPECT_EQ(std::count(listing.begin(), listing.end(), '\n'), a.vocab_size());
  for (const auto& entry : fs::directory_iterator(shared_bpe_model().parent_path()))
    EXPECT_TRUE(entry.path().extension() == ".model" || entry.path().extension() == ".vocab") << entry.path();
}

TEST(SentencePieceTrain, ReportsWhatItDid) {
  TempDir dir;
  const auto docs = english_documents(20, 3);
  SentencePieceTrainConfig c = small_bpe_config();
  c.vocab_size = 300;
  const auto r = train_sentencepiece(docs, c, dir / "m");
  EXPECT_EQ(r.model, dir / "m.model");
  EXPECT_EQ(r.vocab, dir / "m.vocab");
  EXPECT_EQ(r.vocab_size, 300);
  EXPECT_TRUE(fs::exists(r.model) && fs::exists(r.vocab));
  int64_t lines = 0;
  for (const auto& d : docs) lines += 1 + std::count(d.begin(), d.end(), '\n');
  EXPECT_EQ(r.lines, lines);
  EXPECT_EQ(r.lines_used, lines);
}

TEST(SentencePieceTrain, DeterministicForASeed) {
  TempDir dir;
  const auto docs = english_documents(60, 1);
  SentencePieceTrainConfig c = small_bpe_config();
  c.max_sentences = 101;  // fewer than the corpus has lines: the seeded sample decides what is used
  c.seed = 42;
  const auto a = train_sentencepiece(docs, c, dir / "a");
  const auto b = train_sentencepiece(docs, c, dir / "b");
  EXPECT_EQ(a.lines_used, 101);
  EXPECT_GT(a.lines, 101);
  EXPECT_EQ(read_bytes(a.model), read_bytes(b.model));
  EXPECT_EQ(read_bytes(a.vocab), read_bytes(b.vocab));

  // The streaming form sees the same documents, so it trains the same model.
  size_t next = 0;
  const auto streamed = train_sentencepiece(
      [&](std::string& doc) {
        if (next == docs.size()) return false;
        doc = docs[next++];
        return true;
      },
      c, dir / "streamed");
  EXPECT_EQ(read_bytes(a.model), read_bytes(streamed.model));
}

TEST(SentencePieceTrain, BadSettingsAndCorporaAreClearErrors) {
  TempDir dir;
  SentencePieceTrainConfig c = small_bpe_config();
  EXPECT_TRUE(contains(what_of([&] { train_sentencepiece(std::vector<std::string>{"", "\n\n"}, c, dir / "e"); }),
                       "no text to train on"));
  c.vocab_size = 200;
  EXPECT_TRUE(contains(what_of([&] { train_sentencepiece(english_documents(5, 1), c, dir / "s"); }), "vocab_size"));
  c.vocab_size = 100000;  // far more pieces than a few sentences can fill
  const std::string big = what_of([&] { train_sentencepiece(english_documents(5, 1), c, dir / "b"); });
  EXPECT_TRUE(contains(big, "smaller vocab_size")) << big;
  EXPECT_FALSE(fs::exists(dir / "b.model"));
  c = small_bpe_config();
  c.character_coverage = 0.5;
  EXPECT_THROW(train_sentencepiece(english_documents(5, 1), c, dir / "c"), Error);
}

TEST(SentencePieceTrain, UnigramModelsAreLosslessToo) {
  TempDir dir;
  SentencePieceTrainConfig c = small_bpe_config();
  c.model_type = "unigram";
  c.vocab_size = 400;
  const SentencePieceAdapter a(train_sentencepiece(english_documents(60, 1), c, dir / "u").model);
  EXPECT_EQ(a.vocab_size(), 400);
  for (const std::string t : {"  The small river\tcarries \xE2\x96\x81 2024\n\n", "\xF0\x9F\x98\x80 \xE6\xBC\xA2 "})
    EXPECT_EQ(round_trip(a, t), t);
}

TEST(SentencePieceTrain, ConfigReadsFromYaml) {
  const auto c = config::parse<SentencePieceTrainConfig>(
      config::load_yaml_string("vocab_size: 1000\nmodel_type: unigram\nseed: 3\n", "bpe.yaml"));
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_EQ(c.model_type, "unigram");
  EXPECT_EQ(c.seed, 3);
  EXPECT_THROW(config::parse<SentencePieceTrainConfig>(config::load_yaml_string("vocab_sise: 1\n", "bpe.yaml")),
               Error);
  EXPECT_THROW(config::parse<SentencePieceTrainConfig>(config::load_yaml_string("model_type: wordpiece\n", "b")),
               Error);
}

TEST(SentencePieceAdapter, TrickyTextRoundTrips) {
  const SentencePieceAdapter a(shared_bpe_model());
  const std::vector<std::string> texts = {
      "",
      " ",
      "   ",
      "The small river carries the bread before sunrise.",
      "  leading spaces and trailing ones   ",
      "multiple   spaces    inside",
      "line one\nline two\n\n\nafter blank lines\n",
      "windows\r\nline endings\r\n",
      "\ttabs\tand\t\tmore tabs\t",
      "\n",
      "digits 0123456789 and 3.14159",
      "emoji \xF0\x9F\x98\x80\xF0\x9F\x8E\x89 and flags \xF0\x9F\x87\xAB\xF0\x9F\x87\xB7",
      "CJK \xE6\xBC\xA2\xE5\xAD\x97 \xE3\x81\xB2\xE3\x82\x89\xE3\x81\x8C\xE3\x81\xAA \xED\x95\x9C\xEA\xB8\x80",
      "combining e\xCC\x81 vs \xC3\xA9, fullwidth \xEF\xBC\xA1, ligature \xEF\xAC\x81",
      "the whitespace marker \xE2\x96\x81 itself, \xE2\x96\x81\xE2\x96\x81 twice",
      "reserved-looking text: <unk> <s> </s> <pad> <0x41> \xE2\x81\x87",
      std::string("a NUL \0 inside", 14),
      "zero\xE2\x80\x8Bwidth space and nbsp\xC2\xA0here",
  };
  for (const auto& t : texts) EXPECT_EQ(round_trip(a, t), t) << "text: " << t;
}

TEST(SentencePieceAdapter, RandomUnicodeRoundTrips) {
  const SentencePieceAdapter a(shared_bpe_model());
  std::mt19937_64 rng(11);
  // Blocks: ASCII (with controls), Latin-1, Greek, CJK, emoji, and the characters SentencePiece treats
  // specially (its whitespace marker U+2581 and unknown marker U+2047).
  const std::vector<std::pair<uint32_t, uint32_t>> blocks = {{0x00, 0x7F},       {0x80, 0xFF},
                                                             {0x370, 0x3FF},     {0x4E00, 0x9FFF},
                                                             {0x1F300, 0x1F6FF}, {0x2581, 0x2581},
                                                             {0x2047, 0x2047},   {0x20, 0x20}};
  for (int i = 0; i < 200; ++i) {
    std::string text;
    const int n = static_cast<int>(rng() % 40);
    for (int k = 0; k < n; ++k) {
      const auto& [lo, hi] = blocks[rng() % blocks.size()];
      append_utf8(text, lo + static_cast<uint32_t>(rng() % (hi - lo + 1)));
    }
    ASSERT_EQ(round_trip(a, text), text);
  }
}

TEST(SentencePieceAdapter, CompressesInDomainText) {
  const SentencePieceAdapter a(shared_bpe_model());
  std::string held_out;
  for (const auto& d : english_documents(20, 99)) held_out += d + "\n";
  const Span span = a.encode(Segment::of_text(held_out));
  // A BPE vocabulary learnt on this domain needs well under one id per byte.
  EXPECT_LT(static_cast<double>(span.ids.size()), 0.6 * static_cast<double>(held_out.size()))
      << span.ids.size() << " ids for " << held_out.size() << " bytes";
  EXPECT_EQ(a.decode(span).text, held_out);
}

TEST(SentencePieceAdapter, SplitsDigitsAndKeepsNewlinesAsBytes) {
  const SentencePieceAdapter a(shared_bpe_model());
  // split_digits: every digit is its own id, even in numbers that are frequent in training.
  EXPECT_EQ(a.encode(Segment::of_text("1999")).ids.size(), 4u);
  const Span nl = a.encode(Segment::of_text("\n"));
  ASSERT_EQ(nl.ids.size(), 1u);
  EXPECT_EQ(a.piece(nl.ids[0]), "<0x0A>");
}

TEST(SentencePieceAdapter, DecodeRejectsIdsOutsideTheVocabulary) {
  const SentencePieceAdapter a(shared_bpe_model());
  Span span;
  span.modality = modality::kText;
  span.ids = {a.vocab_size()};
  EXPECT_TRUE(contains(what_of([&] { a.decode(span); }), "outside the vocabulary"));
  span.ids = {-1};
  EXPECT_THROW(a.decode(span), Error);
}

TEST(SentencePieceAdapter, InvalidUtf8IsAClearError) {
  const SentencePieceAdapter a(shared_bpe_model());
  for (const std::string bad : {"caf\xC3", "\xFF", "ok \xC0\xAF overlong", "\xED\xA0\x80 surrogate",
                                "\xF4\x90\x80\x80 too big", "\x80 lone continuation"}) {
    const std::string message = what_of([&] { a.encode(Segment::of_text(bad)); });
    EXPECT_TRUE(contains(message, "not valid UTF-8") && contains(message, "bytes adapter")) << message;
  }
  Sample sample;
  sample.id = "corpus.txt:17";
  sample.segments = {Segment::of_text("fine"), Segment::of_text("caf\xE9 latin-1")};
  EXPECT_NO_THROW(encode_segment(a, sample, 0));
  const std::string message = what_of([&] { encode_segment(a, sample, 1); });
  EXPECT_TRUE(contains(message, "corpus.txt:17") && contains(message, "offset 3")) << message;
}

TEST(SentencePieceAdapter, MissingModelIsAClearError) {
  TempDir dir;
  const std::string message = what_of([&] { SentencePieceAdapter a(dir / "nope.model"); });
  EXPECT_TRUE(contains(message, (dir / "nope.model").string())) << message;
  EXPECT_TRUE(contains(message, "tessera prepare")) << message;
}

TEST(SentencePieceAdapter, CorruptModelIsAClearError) {
  TempDir dir;
  std::mt19937_64 rng(5);
  std::string garbage(4096, '\0');
  for (auto& c : garbage) c = static_cast<char>(rng() & 0xFF);
  const std::string real = read_bytes(shared_bpe_model());
  const std::vector<std::pair<std::string, std::string>> files = {
      {"garbage.model", garbage},
      {"text.model", "this is not a sentencepiece model\n"},
      {"empty.model", ""},
      {"truncated.model", real.substr(0, real.size() / 2)},
  };
  for (const auto& [name, bytes] : files) {
    write_bytes(dir / name, bytes);
    const std::string message = what_of([&] { SentencePieceAdapter a(dir / name); });
    EXPECT_TRUE(contains(message, (dir / name).string()) && contains(message, "tessera prepare"))
        << name << ": " << message;
  }
  fs::create_directories(dir / "folder.model");
  EXPECT_THROW(SentencePieceAdapter(dir / "folder.model"), Error);
}

// Models from elsewhere that would change the text are refused at load time.
TEST(SentencePieceAdapter, RefusesLossyModels) {
  TempDir dir;
  std::vector<std::string> lines;
  for (const auto& d : english_documents(30, 2)) lines.push_back(d.substr(0, d.find('\n')));
  auto train = [&](const std::string& name, const std::vector<std::pair<std::string, std::string>>& extra) {
    std::vector<std::pair<std::string, std::string>> args = {
        {"vocab_size", "400"}, {"model_type", "bpe"}, {"minloglevel", "2"}, {"bos_id", "-1"}, {"eos_id", "-1"}};
    args.insert(args.end(), extra.begin(), extra.end());
    std::string model, error;
    EXPECT_TRUE(spm::backend().train(args, lines, 0, &model, &error)) << error;
    write_bytes(dir / name, model);
    return dir / name;
  };
  const auto nfkc = train("nfkc.model", {{"byte_fallback", "true"}, {"normalization_rule_name", "nmt_nfkc"}});
  EXPECT_TRUE(contains(what_of([&] { SentencePieceAdapter a(nfkc); }), "does not give text back unchanged"));
  const auto no_bytes = train("nobytes.model", {{"byte_fallback", "false"}, {"normalization_rule_name", "identity"}});
  EXPECT_TRUE(contains(what_of([&] { SentencePieceAdapter a(no_bytes); }), "no byte pieces"));
}

// LibTorch and SentencePiece in one process (this binary links LibTorch). libsentencepiece defines a
// global FLAGS_minloglevel (an absl::Flag object) and so does libc10 (an int followed by other flags):
// linked normally, SentencePiece's constructor overwrote libc10's flags. Loaded through its module with
// deep binding, each library keeps its own; the few protobuf symbols libtorch_cpu exports are never
// reached either, as SentencePiece stays out of the global scope.
TEST(SentencePieceAdapter, SharesAProcessWithLibTorch) {
  const SentencePieceAdapter a(shared_bpe_model());
  const Span span = a.encode(Segment::of_text("The quiet teacher explains the lessons of the winter."));
  const at::Tensor ids = at::tensor(span.ids, at::kLong);
  EXPECT_EQ(ids.numel(), static_cast<int64_t>(span.ids.size()));
  EXPECT_LT(ids.max().item<int64_t>(), a.vocab_size());
  EXPECT_EQ(round_trip(a, "after a tensor op"), "after a tensor op");

  std::set<std::string> loaded;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        static_cast<std::set<std::string>*>(out)->insert(fs::path(name).filename().string());
        return 0;
      },
      &loaded);
  auto has = [&](const std::string& prefix) {
    return std::any_of(loaded.begin(), loaded.end(), [&](const std::string& n) { return n.rfind(prefix, 0) == 0; });
  };
  EXPECT_TRUE(has("libtorch_cpu.so"));
  EXPECT_TRUE(has("libsentencepiece.so"));
  EXPECT_TRUE(has("libtessera_spm.so"));
  // SentencePiece's symbols are not in the program's scope...
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "_ZN13sentencepiece22SentencePieceProcessorC1Ev"), nullptr);
  // ...and libc10's flags (where this LibTorch build has them) still hold plain values.
  if (const void* level = dlsym(RTLD_DEFAULT, "FLAGS_minloglevel")) {
    Dl_info where{};
    ASSERT_NE(dladdr(level, &where), 0);
    EXPECT_TRUE(contains(where.dli_fname, "libc10")) << where.dli_fname;
    const int value = *static_cast<const int*>(level);
    EXPECT_TRUE(value >= -10 && value <= 10) << "libc10's FLAGS_minloglevel was overwritten: " << value;
  }
  if (const void* fatal = dlsym(RTLD_DEFAULT, "FLAGS_caffe2_use_fatal_for_enforce")) {
    EXPECT_FALSE(*static_cast<const bool*>(fatal)) << "libc10's FLAGS_caffe2_use_fatal_for_enforce was overwritten";
  }
}

}  // namespace
}  // namespace tessera
