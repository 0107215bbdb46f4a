// Image files <-> the image payload of a Segment (ARCHITECTURE §2): a uint8 C×H×W tensor on the CPU,
// C = 3 (RGB, in that order) or 1 (grey), contiguous. Decoding JPEG/PNG goes through OpenCV where the
// build has it (TESSERA_WITH_OPENCV); everything else here (PNG writing, resizing, cropping, float
// conversion, grids) needs only LibTorch and zlib, so it works on the GPU machine as well.
//
//   at::Tensor img = read_image("cat.jpg");              // 3×H×W uint8, RGB
//   img = resize_center_crop(img, 64);                   // 3×64×64
//   at::Tensor x = to_float(img);                        // float32 in [-1, 1]
//   write_png("out.png", to_uint8(x));
#pragma once

#include <ATen/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace tessera::image {

// Whether this build decodes JPEG/PNG (and encodes JPEG): true when built with OpenCV.
bool can_decode();

// Checks that `image` is an image payload (uint8, C×H×W with C in {1, 3}, H and W > 0); `what` names
// it in the error ("sample 12's image").
void check_image(const at::Tensor& image, const std::string& what = "image");

// Decodes a PNG or JPEG file (or any format OpenCV reads) to uint8 C×H×W. `channels`: 3 gives RGB
// (grey replicated), 1 gives grey, 0 keeps the file's kind (grey stays 1 channel, colour gives 3).
// Alpha is composited onto white; 16-bit samples are scaled to 8 bits; JPEG's EXIF orientation is
// applied. A missing, empty, truncated or undecodable file is a tessera::Error naming it; so is any
// decoding in a build without OpenCV.
at::Tensor read_image(const std::filesystem::path& path, int channels = 3);
// The same for encoded bytes in memory; `name` (a path, "archive.tar:img/3.png") is used in errors.
at::Tensor decode_image(const void* data, size_t size, const std::string& name, int channels = 3);

// PNG bytes of an image: 8-bit RGB (a grey image is written with its value in all three channels, so
// read_image(path, 1) returns it exactly). No OpenCV needed.
std::vector<uint8_t> encode_png(const at::Tensor& image);
// Writes a PNG atomically (temporary file, then rename); creates missing folders.
void write_png(const std::filesystem::path& path, const at::Tensor& image);
// JPEG bytes (quality 1..100); needs OpenCV.
std::vector<uint8_t> encode_jpeg(const at::Tensor& image, int quality = 95);

// Resizes to height × width, each axis separately: area averaging (each output pixel the mean of the
// input area it covers, fractional pixels weighted) where that axis shrinks, bicubic interpolation
// (Keys, a = -0.75, half-pixel centres, edges replicated) where it grows, a copy where it keeps its
// size. On uint8 images this is cv::resize's INTER_AREA (exactly) and INTER_CUBIC (within 1), but
// computed with LibTorch, so it needs no OpenCV and runs on any device, in time linear in the image.
// Accepts uint8 images (result rounded and clamped to 0..255) and float tensors [..., H, W] (result
// not clamped).
at::Tensor resize(const at::Tensor& image, int64_t height, int64_t width);
// The central height × width window (offsets rounded down); an error if the image is smaller.
at::Tensor center_crop(const at::Tensor& image, int64_t height, int64_t width);
// Resizes so that the shorter side is `size` (aspect ratio kept), then crops the central size × size
// square: the usual way to make a square training image from any photo.
at::Tensor resize_center_crop(const at::Tensor& image, int64_t size);

// uint8 [..., C, H, W] -> float32 in [-1, 1]: x / 127.5 - 1 (0 -> -1, 255 -> 1).
at::Tensor to_float(const at::Tensor& image);
// The inverse for model outputs: float [-1, 1] -> uint8 (rounded, values outside the range clamped),
// on the CPU.
at::Tensor to_uint8(const at::Tensor& x);

// Tiles images into one RGB image, `columns` per row (the last row may be short), each in a cell of
// the largest height and width with `padding` pixels of `pad_value` between and around cells; smaller
// images are centred in their cell; grey images become RGB.
at::Tensor make_grid(const std::vector<at::Tensor>& images, int64_t columns, int64_t padding = 2,
                     uint8_t pad_value = 255);
// make_grid of a batch [N, C, H, W] (uint8 or float in [-1, 1]) or a list, written as a PNG: what
// every sample-producing command writes.
void write_grid_png(const std::filesystem::path& path, const std::vector<at::Tensor>& images, int64_t columns,
                    int64_t padding = 2);
void write_grid_png(const std::filesystem::path& path, const at::Tensor& batch, int64_t columns, int64_t padding = 2);

}  // namespace tessera::image
