#include "modalities/text_bpe/sentencepiece_adapter.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "core/config.h"
#include "core/error.h"
#include "core/io/files.h"
#include "modalities/text_bpe/spm_backend.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

constexpr const char* kModelHint =
    "train one with `tessera prepare` (data.prepare.bpe) or point at a SentencePiece .model";
// SentencePiece's whitespace marker (U+2581). The model decodes it to a space, so a literal one in the
// input is encoded as its three byte pieces instead, which decode to the character itself.
constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";
// Text that a lossless model must give back unchanged: runs of spaces, leading/trailing space, tabs,
// newlines, the whitespace marker, digits, characters that NFKC would fold (fullwidth A, the fi ligature).
constexpr std::string_view kProbe =
    "  Tessera\tprobe \n\r\n two  spaces \xE2\x96\x81 2024 \xC3\xBC \xE6\xBC\xA2 \xF0\x9F\x98\x80 "
    "\xEF\xBC\xA1 \xEF\xAC\x81  ";

// Offset of the first byte that does not belong to a well-formed UTF-8 sequence (Unicode §3.9,
// table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF), or npos.
size_t invalid_utf8_offset(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + 1 >= n || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (i + k >= n || (p[i + k] & 0xC0) != 0x80) return i;
    i += len;
  }
  return std::string_view::npos;
}

// Up to `max` bytes of `s` from `begin`, printable ASCII kept and everything else as \xNN.
std::string escaped(std::string_view s, size_t begin, size_t max) {
  std::string out;
  for (size_t i = begin; i < s.size() && i < begin + max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '\\' && c != '"') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  return out;
}

// SentencePiece's status text without the "./src/file.cc(123) [condition] " prefix of its checks.
std::string library_message(const std::string& message) {
  std::string m = message;
  if (m.rfind("./src/", 0) == 0 || m.rfind("src/", 0) == 0) {
    const size_t close = m.find("] ");
    m = close == std::string::npos ? "" : m.substr(close + 2);
  }
  while (!m.empty() && (m.back() == ' ' || m.back() == '\n')) m.pop_back();
  return m.empty() ? "it does not parse" : m;
}

uint32_t crc32_of(const std::string& bytes) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  for (size_t pos = 0; pos < bytes.size();) {
    const auto chunk = static_cast<uInt>(std::min<size_t>(bytes.size() - pos, 1u << 30));
    crc = ::crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + pos), chunk);
    pos += chunk;
  }
  return static_cast<uint32_t>(crc);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), "text_bpe: cannot open '", path.string(), "'");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  check(!in.bad(), "text_bpe: cannot read '", path.string(), "'");
  return bytes;
}

// The longest prefix of `line` of at most `max` bytes that ends before a space (so that the next
// chunk starts a word) or, failing that, on a UTF-8 character boundary.
size_t chunk_length(std::string_view line, size_t max) {
  if (line.size() <= max) return line.size();
  const size_t space = line.rfind(' ', max);
  if (space != std::string_view::npos && space > 0) return space;
  size_t cut = max;
  while (cut > 1 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

// Splits documents into non-empty lines of at most `max_bytes` and keeps a uniform sample of at most
// `max_lines` of them (reservoir sampling; SentencePiece's own sampler has a fixed seed).
struct LineSample {
  std::vector<std::string> lines;
  int64_t seen = 0;
};

LineSample sample_lines(const DocumentStream& documents, size_t max_bytes, int64_t max_lines, uint64_t seed) {
  LineSample sample;
  // mt19937_64 and a plain modulo rather than a std:: distribution: the same sample on every platform.
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 1);
  auto add = [&](std::string_view line) {
    ++sample.seen;
    if (max_lines <= 0 || sample.seen <= max_lines) {
      sample.lines.emplace_back(line);
      return;
    }
    const uint64_t j = rng() % static_cast<uint64_t>(sample.seen);
    if (j < static_cast<uint64_t>(max_lines)) sample.lines[j].assign(line);
  };
  std::string doc;
  while (documents(doc)) {
    const std::string_view text = doc;
    for (size_t begin = 0; begin < text.size();) {
      size_t end = text.find('\n', begin);
      if (end == std::string_view::npos) end = text.size();
      std::string_view line = text.substr(begin, end - begin);
      while (!line.empty()) {
        const size_t n = chunk_length(line, max_bytes);
        add(line.substr(0, n));
        line.remove_prefix(n);
      }
      begin = end + 1;
    }
  }
  return sample;
}

// SentencePiece's log level and random seed are process-wide: one training at a time.
std::mutex& training_mutex() {
  static std::mutex m;
  return m;
}

void validate(const SentencePieceTrainConfig& c) {
  check(c.vocab_size > 257 && c.vocab_size <= (int64_t{1} << 30), "sentencepiece: vocab_size ", c.vocab_size,
        " is out of range: the model holds <unk>, the 256 byte pieces and at least one piece per common "
        "character, so use a few hundred or more (4096 and up for real corpora)");
  check(c.character_coverage >= 0.98 && c.character_coverage <= 1.0, "sentencepiece: character_coverage ",
        c.character_coverage, " must be in [0.98, 1] (SentencePiece's range)");
  check(c.model_type == "bpe" || c.model_type == "unigram", "sentencepiece: model_type '", c.model_type,
        "' is not one of bpe, unigram");
  check(c.max_sentences >= 0, "sentencepiece: max_sentences must be >= 0 (0: all lines), got ", c.max_sentences);
  check(c.max_line_bytes >= 16 && c.max_line_bytes <= (int64_t{1} << 30), "sentencepiece: max_line_bytes ",
        c.max_line_bytes, " must be at least 16");
  check(c.seed >= 0, "sentencepiece: seed must be >= 0, got ", c.seed);
  check(c.threads >= 0 && c.threads <= 128, "sentencepiece: threads must be in [0, 128], got ", c.threads);
}

std::string lossless_failure(const spm::Model& sp, std::string_view text, const std::vector<int64_t>& ids) {
  const std::vector<int> ints(ids.begin(), ids.end());
  std::string back, error;
  if (!sp.decode(ints, &back, &error)) return error;
  if (back == text) return "";
  return str("\"", escaped(text, 0, 120), "\" decodes back as \"", escaped(back, 0, 120), "\"");
}

}  // namespace

// ---- training ----------------------------------------------------------------------------------------

SentencePieceTrainResult train_sentencepiece(const DocumentStream& documents, const SentencePieceTrainConfig& config,
                                             const fs::path& model_prefix) {
  validate(config);
  check(!model_prefix.empty() && !model_prefix.filename().empty(), "sentencepiece: model prefix '",
        model_prefix.string(), "' has no file name");

  SentencePieceTrainResult result;
  result.model = fs::path(model_prefix.string() + ".model");
  result.vocab = fs::path(model_prefix.string() + ".vocab");

  LineSample sample = sample_lines(documents, static_cast<size_t>(config.max_line_bytes), config.max_sentences,
                                   static_cast<uint64_t>(config.seed));
  result.lines = sample.seen;
  result.lines_used = static_cast<int64_t>(sample.lines.size());
  check(!sample.lines.empty(), "sentencepiece: no text to train on (the documents have no non-empty line)");

  const int64_t threads =
      config.threads > 0 ? config.threads : std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 128);
  // Lossless for any UTF-8 text: no normalization (identity), whitespace kept as it is (no dummy prefix,
  // no collapsing), unseen characters as byte pieces. No <s>/</s>: the vocabulary layout has its own.
  const std::vector<std::pair<std::string, std::string>> args = {
      {"model_type", config.model_type},
      {"vocab_size", std::to_string(config.vocab_size)},
      {"character_coverage", config::format_double(config.character_coverage)},
      {"input_sentence_size", "0"},  // sampled above, with our seed
      {"max_sentence_length", std::to_string(config.max_line_bytes)},
      {"num_threads", std::to_string(threads)},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"unk_id", "0"},
      {"bos_id", "-1"},
      {"eos_id", "-1"},
      {"pad_id", "-1"},
      {"hard_vocab_limit", "true"},
      // 2: errors only (they also come back as a status). Above 3 SentencePiece would skip even the
      // abort of its FATAL checks.
      {"minloglevel", config.verbose ? "0" : "2"},
  };

  const spm::Backend& backend = spm::backend();
  std::string serialized, error;
  {
    std::lock_guard<std::mutex> lock(training_mutex());
    // Unused by training in SentencePiece 0.1.97/0.2.0 (its RNG serves sampled encodings), set for
    // versions that draw from it. 0xFFFFFFFF is reserved for "seed from std::random_device".
    const auto seed = static_cast<unsigned>(static_cast<uint64_t>(config.seed) % 0xFFFFFFFFu);
    if (!backend.train(args, sample.lines, seed, &serialized, &error)) {
      const bool vocab = error.find("ocabulary size") != std::string::npos;
      fail("sentencepiece training failed: ", library_message(error),
           vocab ? str(" (vocab_size ", config.vocab_size, " does not fit ", result.lines_used,
                       " lines of text: use more text or a smaller vocab_size)")
                 : std::string());
    }
  }
  sample.lines.clear();
  sample.lines.shrink_to_fit();

  const std::unique_ptr<spm::Model> sp = backend.load(serialized, &error);
  check(sp != nullptr, "sentencepiece: the trained model does not load: ", library_message(error));
  result.vocab_size = sp->size();

  std::string vocab;
  for (int id = 0; id < sp->size(); ++id) vocab += str(sp->id_to_piece(id), '\t', sp->score(id), '\n');
  write_bytes_atomic(result.vocab, vocab.data(), vocab.size());
  write_bytes_atomic(result.model, serialized.data(), serialized.size());
  return result;
}

SentencePieceTrainResult train_sentencepiece(const std::vector<std::string>& documents,
                                             const SentencePieceTrainConfig& config, const fs::path& model_prefix) {
  size_t next = 0;
  return train_sentencepiece(
      [&](std::string& doc) {
        if (next >= documents.size()) return false;
        doc = documents[next++];
        return true;
      },
      config, model_prefix);
}

// ---- the adapter -------------------------------------------------------------------------------------

SentencePieceAdapter::SentencePieceAdapter(fs::path model, const fs::path& base_dir) : model_(std::move(model)) {
  check(!model_.empty(), "text_bpe: no model path given; ", kModelHint);
  resolved_ = model_.is_relative() && !base_dir.empty() ? base_dir / model_ : model_;
  const std::string where =
      resolved_ == model_ ? str("'", model_.string(), "'")
                          : str("'", resolved_.string(), "' ('", model_.string(), "' in '", base_dir.string(), "')");
  std::error_code ec;
  check(fs::is_regular_file(resolved_, ec), "text_bpe: no SentencePiece model at ", where, "; ", kModelHint);
  const auto size = fs::file_size(resolved_, ec);
  // Protocol buffers stop at 2 GiB; a bigger file is certainly something else.
  check(!ec && size < (uint64_t{1} << 31), "text_bpe: ", where, " is not a SentencePiece model (",
        ec ? ec.message() : str(size, " bytes"), "); ", kModelHint);

  const std::string bytes = read_file(resolved_);
  crc32_ = crc32_of(bytes);
  std::string error;
  sp_ = spm::backend().load(bytes, &error);
  check(sp_ != nullptr, "text_bpe: ", where, " is not a SentencePiece model (", library_message(error), "); ",
        kModelHint);
  vocab_size_ = sp_->size();
  check(vocab_size_ > 0, "text_bpe: ", where, " is not a SentencePiece model (no pieces); ", kModelHint);

  // Lossless encoding needs a byte piece for every byte and no normalization; other models (e.g.
  // trained without byte_fallback, or with NFKC) would silently change the text.
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof piece, "<0x%02X>", b);
    const int id = sp_->piece_to_id(piece);
    check(sp_->is_byte(id), "text_bpe: the model ", where,
          " has no byte pieces (it was trained without byte_fallback), so it cannot encode every text; ",
          kModelHint);
    byte_ids_[b] = id;
  }
  std::vector<int64_t> ids;
  append_ids(kProbe, ids);
  const std::string lost = lossless_failure(*sp_, kProbe, ids);
  check(lost.empty(), "text_bpe: the model ", where,
        " does not give text back unchanged (it normalizes or drops whitespace): ", lost, "; ", kModelHint,
        " trained with identity normalization and byte_fallback");
}

SentencePieceAdapter::~SentencePieceAdapter() = default;

void SentencePieceAdapter::append_ids(std::string_view text, std::vector<int64_t>& ids) const {
  std::vector<int> part_ids;
  std::string error;
  for (size_t begin = 0; begin <= text.size();) {
    const size_t marker = text.find(kSpaceSymbol, begin);
    const std::string_view part = text.substr(begin, marker == std::string_view::npos ? std::string_view::npos
                                                                                    : marker - begin);
    if (!part.empty()) {
      check(sp_->encode(part, &part_ids, &error), "text_bpe: SentencePiece cannot encode the text: ",
            library_message(error));
      ids.insert(ids.end(), part_ids.begin(), part_ids.end());
    }
    if (marker == std::string_view::npos) break;
    for (const unsigned char c : kSpaceSymbol) ids.push_back(byte_ids_[c]);
    begin = marker + kSpaceSymbol.size();
  }
}

Span SentencePieceAdapter::encode(const Segment& segment) const {
  check(segment.modality == modality::kText, "text_bpe: cannot encode a '", segment.modality,
        "' segment (it encodes text)");
  const std::string& text = segment.text;
  const size_t bad = invalid_utf8_offset(text);
  if (bad != std::string_view::npos) {
    const size_t from = bad > 24 ? bad - 24 : 0;
    fail("text_bpe: the text is not valid UTF-8 (byte 0x", escaped(text, bad, 1).substr(2), " at offset ", bad,
         " of ", text.size(), ", after \"", escaped(text, from, bad - from),
         "\"); this adapter encodes UTF-8 text only: fix the input's encoding, or use the bytes adapter, "
         "which takes any bytes");
  }
  Span span;
  span.modality = modality::kText;
  append_ids(text, span.ids);
  const int64_t unk = sp_->unk_id();
  for (size_t i = 0; i < span.ids.size(); ++i)
    check(span.ids[i] != unk, "text_bpe: the model encodes token ", i, " of the text as <unk> (",
          model_.string(), " cannot encode this text losslessly)");
  return span;
}

Segment SentencePieceAdapter::decode(const Span& span) const {
  check(span.is_discrete(), "text_bpe: cannot decode continuous latents");
  std::vector<int> ids(span.ids.size());
  for (size_t i = 0; i < span.ids.size(); ++i) {
    const int64_t id = span.ids[i];
    check(id >= 0 && id < vocab_size_, "text_bpe: id ", id, " at position ", i, " is outside the vocabulary [0, ",
          vocab_size_, ") of '", model_.string(), "'");
    ids[i] = static_cast<int>(id);
  }
  std::string text, error;
  check(sp_->decode(ids, &text, &error), "text_bpe: SentencePiece cannot decode the ids: ", library_message(error));
  return Segment::of_text(std::move(text));
}

nlohmann::json SentencePieceAdapter::describe() const {
  return {{"type", kType}, {"model", model_.string()}, {"crc32", crc32_}, {"vocab_size", vocab_size_}};
}

std::string SentencePieceAdapter::piece(int64_t id) const {
  check(id >= 0 && id < vocab_size_, "text_bpe: id ", id, " is outside the vocabulary [0, ", vocab_size_, ")");
  return sp_->id_to_piece(static_cast<int>(id));
}

}  // namespace tessera
