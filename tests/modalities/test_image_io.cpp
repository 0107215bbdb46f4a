// Image I/O: PNG/JPEG decoding (with OpenCV), PNG writing, resizing against OpenCV's values, cropping,
// float conversion and grids.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <string>
#include <vector>

#include "modalities/image/image_io.h"
#include "modalities_test_util.h"

namespace tessera::image {
namespace {
namespace fs = std::filesystem;
using tessera::testing::contains;
using tessera::testing::read_bytes;
using tessera::testing::TempDir;
using tessera::testing::what_of;
using tessera::testing::write_bytes;

// A reproducible test image with smooth regions and edges (JPEG-friendly), uint8 3×h×w.
at::Tensor test_image(int64_t h, int64_t w, uint64_t seed = 1) {
  at::Tensor ys = at::arange(h, at::kFloat).view({1, h, 1}), xs = at::arange(w, at::kFloat).view({1, 1, w});
  at::Tensor r = (xs * (255.0 / std::max<int64_t>(1, w - 1))).expand({1, h, w});
  at::Tensor g = (ys * (255.0 / std::max<int64_t>(1, h - 1))).expand({1, h, w});
  at::Tensor b = ((xs + ys + static_cast<double>(seed)).fmod(32) < 16).to(at::kFloat) * 200 + 20;
  return at::cat({r, g, b.expand({1, h, w})}, 0).round().to(at::kByte).contiguous();
}

std::string as_string(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

TEST(ImageIo, PngBytesAreAPngOfTheRightSize) {
  const std::vector<uint8_t> png = encode_png(test_image(5, 7));
  ASSERT_GT(png.size(), 33u);
  EXPECT_EQ(as_string(png).substr(1, 3), "PNG");
  // IHDR: width then height, big-endian, at bytes 16..23.
  EXPECT_EQ(png[19], 7);
  EXPECT_EQ(png[23], 5);
  EXPECT_TRUE(contains(what_of([] { encode_png(at::zeros({3, 4, 4}, at::kFloat)); }), "uint8"));
  EXPECT_TRUE(contains(what_of([] { encode_png(at::zeros({2, 4, 4}, at::kByte)); }), "channels"));
}

TEST(ImageIo, FloatConversionRoundTripsAndHitsTheEnds) {
  const at::Tensor img = at::arange(256, at::kLong).to(at::kByte).view({1, 16, 16});
  const at::Tensor x = to_float(img);
  EXPECT_EQ(x.scalar_type(), at::kFloat);
  EXPECT_FLOAT_EQ(x.min().item<float>(), -1.0f);
  EXPECT_FLOAT_EQ(x.max().item<float>(), 1.0f);
  EXPECT_TRUE(at::equal(to_uint8(x), img));
  EXPECT_TRUE(at::equal(to_uint8(at::tensor({-3.0f, 0.0f, 7.0f})), at::tensor({0, 128, 255}, at::kByte)));
}

TEST(ImageResize, AreaShrinkWeighsFractionalPixels) {
  // OpenCV's INTER_AREA gives 10 50 for [0 30 60] -> 2 and 26 90 202 for [10 50 90 130 250] -> 3.
  const at::Tensor a = at::tensor({0, 30, 60}, at::kByte).view({1, 1, 3});
  EXPECT_TRUE(at::equal(resize(a, 1, 2), at::tensor({10, 50}, at::kByte).view({1, 1, 2})));
  const at::Tensor b = at::tensor({10, 50, 90, 130, 250}, at::kByte).view({1, 1, 5});
  EXPECT_TRUE(at::equal(resize(b, 1, 3), at::tensor({26, 90, 202}, at::kByte).view({1, 1, 3})));
  // An integer factor averages blocks.
  const at::Tensor blocks = at::arange(16, at::kFloat).view({1, 4, 4});
  const at::Tensor expected = at::tensor({2.5f, 4.5f, 10.5f, 12.5f}).view({1, 2, 2});
  EXPECT_TRUE(at::allclose(resize(blocks, 2, 2), expected));
  // A large factor (a photo shrunk to a thumbnail): the mean of each block of 100.
  const at::Tensor ramp = at::arange(1000, at::kDouble).view({1, 1, 1000});
  const at::Tensor means = at::arange(10, at::kDouble).mul(100).add(49.5).view({1, 1, 10});
  EXPECT_TRUE(at::allclose(resize(ramp, 1, 10), means));
}

TEST(ImageResize, BicubicGrowthMatchesOpenCv) {
  // cv::resize(..., INTER_CUBIC) of [0 100] to 4 wide: 0 23 77 111; of [0 40 200 100] to 7 wide
  // in float: -3.968647 3.790042 30.320686 133.125 201.669113 143.914017 90.078354.
  const at::Tensor a = at::tensor({0, 100}, at::kByte).view({1, 1, 2});
  EXPECT_TRUE(at::equal(resize(a, 1, 4), at::tensor({0, 23, 77, 111}, at::kByte).view({1, 1, 4})));
  const at::Tensor b = at::tensor({0.0f, 40.0f, 200.0f, 100.0f}).view({1, 4, 1});  // along the height
  const at::Tensor out = resize(b, 7, 1).flatten();
  const at::Tensor cv = at::tensor({-3.968647f, 3.790042f, 30.320686f, 133.125f, 201.669113f, 143.914017f, 90.078354f});
  EXPECT_TRUE(at::allclose(out, cv, 0, 1e-3)) << out;
  // A constant image stays constant; shapes follow each axis' own rule.
  const at::Tensor flat = at::full({3, 5, 9}, 77, at::kByte);
  EXPECT_TRUE(at::equal(resize(flat, 11, 4), at::full({3, 11, 4}, 77, at::kByte)));
  EXPECT_EQ(resize(test_image(20, 30), 7, 45).sizes(), (at::IntArrayRef{3, 7, 45}));
  EXPECT_EQ(resize(at::zeros({2, 3, 8, 8}), 4, 16).sizes(), (at::IntArrayRef{2, 3, 4, 16}));
  EXPECT_TRUE(contains(what_of([] { resize(at::zeros({3, 4, 4}, at::kByte), 0, 4); }), "positive"));
}

TEST(ImageResize, CenterCropTakesTheMiddle) {
  const at::Tensor img = at::arange(3 * 5 * 7, at::kLong).view({3, 5, 7});
  const at::Tensor crop = center_crop(img, 3, 3);
  EXPECT_EQ(crop.sizes(), (at::IntArrayRef{3, 3, 3}));
  EXPECT_EQ(crop[0][0][0].item<int64_t>(), img[0][1][2].item<int64_t>());
  EXPECT_EQ(crop[2][2][2].item<int64_t>(), img[2][3][4].item<int64_t>());
  EXPECT_TRUE(contains(what_of([&] { center_crop(img, 6, 3); }), "5x7"));
  // Shorter side to the size, then the central square.
  EXPECT_EQ(resize_center_crop(test_image(40, 80), 32).sizes(), (at::IntArrayRef{3, 32, 32}));
  EXPECT_EQ(resize_center_crop(test_image(50, 20), 64).sizes(), (at::IntArrayRef{3, 64, 64}));
  const at::Tensor flat = at::full({1, 30, 90}, 9, at::kByte);
  EXPECT_TRUE(at::equal(resize_center_crop(flat, 16), at::full({1, 16, 16}, 9, at::kByte)));
}

TEST(ImageIo, GridPlacesImagesInPaddedCells) {
  const at::Tensor red = at::zeros({3, 4, 4}, at::kByte), grey = at::full({1, 2, 2}, 100, at::kByte);
  red[0].fill_(255);
  const at::Tensor grid = make_grid({red, grey, red}, 2, 1, 7);
  EXPECT_EQ(grid.sizes(), (at::IntArrayRef{3, 2 * 5 + 1, 2 * 5 + 1}));
  EXPECT_EQ(grid[0][0][0].item<int>(), 7);                            // padding
  EXPECT_TRUE(at::equal(grid.narrow(1, 1, 4).narrow(2, 1, 4), red));  // first cell
  // The 2×2 grey image centred in the second cell (rows 1..4, columns 6..9), as RGB.
  EXPECT_EQ(grid[1][1][6].item<int>(), 7);
  EXPECT_TRUE(at::equal(grid.narrow(1, 2, 2).narrow(2, 7, 2), at::full({3, 2, 2}, 100, at::kByte)));
  EXPECT_EQ(grid[1][4][9].item<int>(), 7);
  EXPECT_TRUE(at::equal(grid.narrow(1, 6, 4).narrow(2, 6, 4), at::full({3, 4, 4}, 7, at::kByte)));  // empty last cell
  TempDir dir;
  write_grid_png(dir / "sub/grid.png", at::zeros({3, 3, 8, 8}), 2);
  EXPECT_EQ(read_bytes(dir / "sub/grid.png").substr(1, 3), "PNG");
  EXPECT_TRUE(contains(what_of([] { make_grid({}, 2); }), "no images"));
}

#if TESSERA_WITH_OPENCV

// A PNG with any colour type, for decoder cases encode_png does not produce (grey, RGBA, 16-bit).
std::string png_of(int w, int h, int color_type, int bit_depth, const std::vector<uint8_t>& samples) {
  const int channels = color_type == 0 ? 1 : color_type == 2 ? 3 : color_type == 4 ? 2 : 4;
  const size_t stride = static_cast<size_t>(w) * channels * (bit_depth / 8);
  std::vector<uint8_t> raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), samples.begin() + y * stride, samples.begin() + (y + 1) * stride);
  }
  uLongf size = compressBound(raw.size());
  std::vector<uint8_t> packed(size);
  compress2(packed.data(), &size, raw.data(), raw.size(), 6);
  packed.resize(size);
  std::string out = "\x89PNG\r\n\x1a\n";
  auto u32 = [](uint32_t v) {
    return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                       static_cast<char>(v)};
  };
  auto chunk = [&](const std::string& type, const std::string& data) {
    const std::string body = type + data;
    out += u32(data.size()) + body + u32(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size()));
  };
  chunk("IHDR", u32(w) + u32(h) + std::string{static_cast<char>(bit_depth), static_cast<char>(color_type), 0, 0, 0});
  chunk("IDAT", std::string(packed.begin(), packed.end()));
  chunk("IEND", "");
  return out;
}

TEST(ImageIo, PngRoundTripIsExactAndRgbOrdered) {
  TempDir dir;
  const at::Tensor img = test_image(13, 17);
  write_png(dir / "a.png", img);
  const at::Tensor back = read_image(dir / "a.png");
  EXPECT_EQ(back.sizes(), (at::IntArrayRef{3, 13, 17}));
  EXPECT_EQ(back.scalar_type(), at::kByte);
  EXPECT_TRUE(at::equal(back, img));
  // Pure red stays in channel 0 (OpenCV's BGR is converted).
  at::Tensor red = at::zeros({3, 2, 2}, at::kByte);
  red[0].fill_(255);
  const std::vector<uint8_t> bytes = encode_png(red);
  EXPECT_TRUE(at::equal(decode_image(bytes.data(), bytes.size(), "red"), red));
  // Grey: written as RGB, read back as one channel exactly.
  const at::Tensor grey = at::arange(64, at::kLong).mul(4).to(at::kByte).view({1, 8, 8});
  write_png(dir / "g.png", grey);
  EXPECT_TRUE(at::equal(read_image(dir / "g.png", 1), grey));
  EXPECT_EQ(read_image(dir / "g.png", 3).size(0), 3);
}

TEST(ImageIo, DecoderHandlesGreyAlphaAndSixteenBitPngs) {
  // A grey file keeps one channel with channels = 0, becomes RGB with 3.
  const std::string grey = png_of(2, 1, 0, 8, {10, 200});
  EXPECT_TRUE(
      at::equal(decode_image(grey.data(), grey.size(), "grey", 0), at::tensor({10, 200}, at::kByte).view({1, 1, 2})));
  EXPECT_EQ(decode_image(grey.data(), grey.size(), "grey", 3).sizes(), (at::IntArrayRef{3, 1, 2}));
  // RGBA: opaque pixels keep their colour, transparent ones become white, half alpha blends.
  const std::string rgba = png_of(3, 1, 6, 8, {255, 0, 0, 255, 0, 0, 255, 0, 0, 0, 0, 128});
  const at::Tensor rgb = decode_image(rgba.data(), rgba.size(), "rgba");
  EXPECT_TRUE(at::equal(rgb.select(2, 0).flatten(), at::tensor({255, 0, 0}, at::kByte)));
  EXPECT_TRUE(at::equal(rgb.select(2, 1).flatten(), at::tensor({255, 255, 255}, at::kByte)));
  EXPECT_TRUE(at::equal(rgb.select(2, 2).flatten(), at::tensor({127, 127, 127}, at::kByte)));
  // 16-bit grey: 65535 -> 255, 257 * 100 -> 100.
  const std::string deep = png_of(2, 1, 0, 16, {0xFF, 0xFF, 0x64, 0x64});
  EXPECT_TRUE(
      at::equal(decode_image(deep.data(), deep.size(), "deep", 1), at::tensor({255, 100}, at::kByte).view({1, 1, 2})));
}

TEST(ImageIo, JpegRoundTripKeepsShapeRangeAndContent) {
  TempDir dir;
  const at::Tensor img = test_image(24, 40);
  const std::vector<uint8_t> jpeg = encode_jpeg(img, 95);
  EXPECT_EQ(jpeg[0], 0xFF);
  EXPECT_EQ(jpeg[1], 0xD8);
  write_bytes(dir / "a.jpg", as_string(jpeg));
  const at::Tensor back = read_image(dir / "a.jpg");
  EXPECT_EQ(back.sizes(), (at::IntArrayRef{3, 24, 40}));
  EXPECT_EQ(back.scalar_type(), at::kByte);
  const double mean_error = (back.to(at::kFloat) - img.to(at::kFloat)).abs().mean().item<double>();
  EXPECT_LT(mean_error, 6.0);  // lossy, but close (channel order right: a swap would be ~100)
  EXPECT_EQ(read_image(dir / "a.jpg", 1).sizes(), (at::IntArrayRef{1, 24, 40}));
}

TEST(ImageIo, BadFilesAreErrorsNamingThem) {
  TempDir dir;
  write_bytes(dir / "empty.png", "");
  EXPECT_TRUE(contains(what_of([&] { read_image(dir / "empty.png"); }), "empty.png' is empty"));

  const std::string png = as_string(encode_png(test_image(16, 16)));
  write_bytes(dir / "cut.png", png.substr(0, png.size() * 2 / 3));
  const std::string cut_png = what_of([&] { read_image(dir / "cut.png"); });
  EXPECT_TRUE(contains(cut_png, "cut.png") && contains(cut_png, "truncated PNG")) << cut_png;

  const std::string jpeg = as_string(encode_jpeg(test_image(32, 32)));
  write_bytes(dir / "cut.jpg", jpeg.substr(0, jpeg.size() / 2));
  const std::string cut_jpeg = what_of([&] { read_image(dir / "cut.jpg"); });
  EXPECT_TRUE(contains(cut_jpeg, "cut.jpg") && contains(cut_jpeg, "truncated JPEG")) << cut_jpeg;

  std::string corrupt = png;
  for (size_t i = 45; i < 60; ++i) corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5A);  // inside IDAT, chunks intact
  write_bytes(dir / "corrupt.png", corrupt);
  const std::string bad = what_of([&] { read_image(dir / "corrupt.png"); });
  EXPECT_TRUE(contains(bad, "corrupt.png") && contains(bad, "cannot decode")) << bad;

  write_bytes(dir / "notes.png", "these are not pixels\n");
  const std::string text = what_of([&] { read_image(dir / "notes.png"); });
  EXPECT_TRUE(contains(text, "notes.png") && contains(text, "cannot decode")) << text;

  EXPECT_TRUE(contains(what_of([&] { read_image(dir / "missing.jpg"); }), "missing.jpg' not found"));
  EXPECT_TRUE(contains(what_of([&] { read_image(dir / "notes.png", 2); }), "channels"));
}

#else  // built without OpenCV

TEST(ImageIo, DecodingWithoutOpenCvSaysWhy) {
  EXPECT_FALSE(can_decode());
  const std::vector<uint8_t> png = encode_png(test_image(4, 4));
  const std::string message = what_of([&] { decode_image(png.data(), png.size(), "x.png"); });
  EXPECT_TRUE(contains(message, "x.png") && contains(message, "no OpenCV")) << message;
  EXPECT_TRUE(contains(what_of([] { encode_jpeg(test_image(4, 4)); }), "no OpenCV"));
  EXPECT_TRUE(contains(what_of([] { decode_image("", 0, "empty.png"); }), "empty.png' is empty"));
}

#endif

}  // namespace
}  // namespace tessera::image
