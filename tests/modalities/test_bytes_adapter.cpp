#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "modalities/bytes/bytes_adapter.h"

namespace tessera {
namespace {

std::string random_bytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

TEST(BytesAdapter, DescribesItself) {
  const BytesAdapter a;
  EXPECT_EQ(a.name(), "bytes");
  EXPECT_EQ(a.modality(), modality::kText);
  EXPECT_EQ(a.vocab_size(), 256);
  EXPECT_EQ(a.describe(), nlohmann::json({{"type", "bytes"}}));
}

TEST(BytesAdapter, IdsAreTheByteValues) {
  const BytesAdapter a;
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const Span span = a.encode(Segment::of_text(all));
  ASSERT_EQ(span.ids.size(), 256u);
  EXPECT_TRUE(span.is_discrete());
  EXPECT_EQ(span.modality, modality::kText);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(span.ids[b], b);
  EXPECT_EQ(a.decode(span).text, all);
}

TEST(BytesAdapter, AnyByteStringRoundTrips) {
  const BytesAdapter a;
  std::mt19937_64 rng(7);
  const std::vector<std::string> fixed = {
      "", std::string("\0", 1), std::string("a\0b\0", 4), "\xff\xfe", "\xc3(", "\xed\xa0\x80",  // surrogate
      "\xf4\x90\x80\x80", "caf\xc3\xa9 \xe2\x96\x81 \xf0\x9f\x98\x80", "  two  spaces\t\n\r\n"};
  for (const auto& s : fixed) EXPECT_EQ(a.decode(a.encode(Segment::of_text(s))).text, s);
  for (int i = 0; i < 200; ++i) {
    const std::string s = random_bytes(rng, rng() % 300);
    const Span span = a.encode(Segment::of_text(s));
    EXPECT_EQ(span.ids.size(), s.size());
    EXPECT_EQ(a.decode(span).text, s);
  }
}

TEST(BytesAdapter, RejectsWhatIsNotAByte) {
  const BytesAdapter a;
  Span span;
  span.modality = modality::kText;
  span.ids = {65, 256};
  try {
    a.decode(span);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
  }
  span.ids = {-1};
  EXPECT_THROW(a.decode(span), Error);
  Segment image;
  image.modality = modality::kImage;
  EXPECT_THROW(a.encode(image), Error);
}

}  // namespace
}  // namespace tessera
