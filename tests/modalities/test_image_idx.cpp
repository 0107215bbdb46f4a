// The IDX reader on files written here (plain and gzip'd, good and malformed) and on the real
// Fashion-MNIST files when the Debian package is installed.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <string>
#include <vector>

#include "modalities/image/idx.h"
#include "modalities_test_util.h"

namespace tessera::image {
namespace {
namespace fs = std::filesystem;
using tessera::testing::contains;
using tessera::testing::TempDir;
using tessera::testing::what_of;
using tessera::testing::write_bytes;

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// An IDX file's bytes: header for `type` and `dims`, then `payload` as given.
std::string idx_bytes(uint8_t type, const std::vector<uint32_t>& dims, const std::string& payload) {
  std::string out{0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims) out += be32(d);
  return out + payload;
}

void write_gzip(const fs::path& path, const std::string& bytes) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

std::string pixels(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(i * 7 % 256));
  return out;
}

TEST(ImageIdx, ReadsPlainAndGzipFiles) {
  TempDir dir;
  const std::string bytes = idx_bytes(0x08, {3, 2, 4}, pixels(24));
  write_bytes(dir / "a-idx3-ubyte", bytes);
  write_gzip(dir / "a-idx3-ubyte.gz", bytes);
  const at::Tensor expected = at::arange(24, at::kLong).mul(7).remainder(256).to(at::kByte).view({3, 2, 4});
  for (const char* name : {"a-idx3-ubyte", "a-idx3-ubyte.gz"}) {
    const at::Tensor t = read_idx(dir / name);
    EXPECT_EQ(t.scalar_type(), at::kByte);
    EXPECT_TRUE(at::equal(t, expected)) << name;
    EXPECT_TRUE(at::equal(read_idx(dir / name, 2), expected.narrow(0, 0, 2))) << name;
    EXPECT_TRUE(at::equal(read_idx(dir / name, 10), expected)) << name;  // more than there are: all
  }
  // Multi-byte types are big-endian on disk.
  write_bytes(dir / "i32", idx_bytes(0x0C, {2}, be32(1) + be32(static_cast<uint32_t>(-300))));
  EXPECT_TRUE(at::equal(read_idx(dir / "i32"), at::tensor({1, -300}, at::kInt)));
  write_bytes(dir / "f32", idx_bytes(0x0D, {1}, be32(0x3FC00000)));
  EXPECT_FLOAT_EQ(read_idx(dir / "f32").item<float>(), 1.5f);
}

TEST(ImageIdx, MalformedFilesAreErrorsNamingThem) {
  TempDir dir;
  auto error_of = [&](const std::string& name, const std::string& bytes) {
    write_bytes(dir / name, bytes);
    const std::string message = what_of([&] { read_idx(dir / name); });
    EXPECT_TRUE(contains(message, name)) << message;
    return message;
  };
  EXPECT_TRUE(contains(error_of("empty", ""), "empty"));
  EXPECT_TRUE(contains(error_of("magic", "\x01\x02\x08\x01" + be32(1) + "x"), "magic"));
  EXPECT_TRUE(contains(error_of("type", idx_bytes(0x07, {1}, "x")), "unknown type code 0x7"));
  EXPECT_TRUE(contains(error_of("nodims", idx_bytes(0x08, {}, "")), "0 dimensions"));
  EXPECT_TRUE(contains(error_of("header", std::string{0, 0, 8, 3} + be32(5)), "truncated in its header"));
  EXPECT_TRUE(contains(error_of("short", idx_bytes(0x08, {2, 3}, pixels(5))), "needs 6 bytes of data, found 5"));
  EXPECT_TRUE(contains(error_of("long", idx_bytes(0x08, {2, 3}, pixels(7))), "bytes after"));
  EXPECT_TRUE(
      contains(error_of("huge", idx_bytes(0x08, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, "")), "impossible shape"));
  // A gzip stream cut off in the middle.
  write_gzip(dir / "full.gz", idx_bytes(0x08, {64, 64}, pixels(4096)));
  const std::string gz = tessera::testing::read_bytes(dir / "full.gz");
  const std::string cut = error_of("cut.gz", gz.substr(0, gz.size() / 2));
  EXPECT_TRUE(contains(cut, "truncated") || contains(cut, "corrupt")) << cut;
  EXPECT_TRUE(contains(what_of([&] { read_idx(dir / "absent"); }), "absent' not found"));
}

TEST(ImageIdx, ImagesAndLabelsMustAgree) {
  TempDir dir;
  write_bytes(dir / "images", idx_bytes(0x08, {3, 2, 2}, pixels(12)));
  write_bytes(dir / "labels", idx_bytes(0x08, {3}, std::string{1, 0, 9}));
  write_bytes(dir / "two-labels", idx_bytes(0x08, {2}, std::string{1, 0}));
  const LabeledImages set = read_idx_images(dir / "images", dir / "labels");
  EXPECT_EQ(set.images.sizes(), (at::IntArrayRef{3, 1, 2, 2}));
  EXPECT_TRUE(at::equal(set.labels, at::tensor({1, 0, 9}, at::kLong)));
  EXPECT_TRUE(contains(what_of([&] { read_idx_images(dir / "images", dir / "two-labels"); }), "has 3 images but"));
  EXPECT_TRUE(contains(what_of([&] { read_idx_images(dir / "labels", dir / "labels"); }), "N×H×W"));
}

TEST(ImageIdx, FashionMnistCaptionsNameTheClass) {
  EXPECT_EQ(fashion_mnist_classes().size(), 10u);
  EXPECT_EQ(fashion_mnist_classes()[9], "Ankle boot");
  const auto captions = fashion_mnist_captions(1);
  EXPECT_GE(captions.size(), 3u);
  for (const auto& c : captions) EXPECT_TRUE(contains(c, "trousers")) << c;
  EXPECT_TRUE(contains(fashion_mnist_captions(9)[0], "an ankle boot"));
  EXPECT_TRUE(contains(what_of([] { fashion_mnist_captions(10); }), "outside 0..9"));
  TempDir dir;
  EXPECT_FALSE(fashion_mnist_available(dir.path()));
  EXPECT_TRUE(contains(what_of([&] { read_fashion_mnist("test", dir.path()); }), "dataset-fashion-mnist"));
  EXPECT_TRUE(contains(what_of([&] { read_fashion_mnist("val", dir.path()); }), "'train' or 'test'"));
}

TEST(ImageIdx, RealFashionMnistTestSplit) {
  if (!fashion_mnist_available()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const LabeledImages test = read_fashion_mnist("test");
  EXPECT_EQ(test.images.sizes(), (at::IntArrayRef{10000, 1, 28, 28}));
  EXPECT_EQ(test.images.scalar_type(), at::kByte);
  // The test split is balanced: 1000 images per class.
  EXPECT_TRUE(at::equal(at::bincount(test.labels), at::full({10}, 1000, at::kLong)));
  EXPECT_EQ(test.class_names, fashion_mnist_classes());
  // Real pictures: dark background, bright objects.
  EXPECT_EQ(test.images.select(2, 0).select(2, 0).max().item<int>() < 64, true);
  EXPECT_GT(test.images.max().item<int>(), 200);
  const LabeledImages few = read_fashion_mnist("train", kFashionMnistDir, 5);
  EXPECT_EQ(few.images.size(0), 5);
  EXPECT_EQ(few.labels.size(0), 5);
}

}  // namespace
}  // namespace tessera::image
