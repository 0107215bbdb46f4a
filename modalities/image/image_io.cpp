#include "modalities/image/image_io.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#if TESSERA_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

#include "core/error.h"
#include "core/io/files.h"
#include "core/plot.h"

namespace tessera::image {
namespace fs = std::filesystem;

namespace {

constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

bool is_png(const uint8_t* p, size_t n) { return n >= 8 && std::memcmp(p, kPngSignature, 8) == 0; }
bool is_jpeg(const uint8_t* p, size_t n) { return n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF; }

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Decoders fill a cut-off file with grey and call it a success, so completeness is checked first.
// A PNG is complete when its chunks, walked by their lengths, reach IEND inside the data.
bool png_complete(const uint8_t* p, size_t n) {
  size_t pos = 8;
  while (pos + 12 <= n) {
    const uint64_t length = be32(p + pos);
    if (std::memcmp(p + pos + 4, "IEND", 4) == 0) return true;
    pos += 12 + length;
  }
  return false;
}

// A JPEG is complete when the end-of-image marker FF D9 follows the first start-of-scan segment (in
// entropy-coded data a literal FF is stuffed as FF 00, so FF D9 there can only be the marker). The
// search starts after the headers because an EXIF thumbnail in them has an FF D9 of its own.
bool jpeg_complete(const uint8_t* p, size_t n) {
  size_t pos = 2;
  while (pos + 4 <= n) {
    if (p[pos] != 0xFF) return true;  // not a marker where one must be: corrupt, left to the decoder
    const uint8_t marker = p[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) {  // markers without a length
      pos += 2;
      continue;
    }
    if (marker == 0xD9) return true;
    const size_t length = (size_t{p[pos + 2]} << 8) | p[pos + 3];
    if (marker == 0xDA) {
      for (size_t i = pos + 2 + length; i + 1 < n; ++i)
        if (p[i] == 0xFF && p[i + 1] == 0xD9) return true;
      return false;
    }
    pos += 2 + length;
  }
  return false;
}

std::string human_size(size_t n) { return str(n, n == 1 ? " byte" : " bytes"); }

// uint8 C×H×W contiguous CPU copy of a checked image.
at::Tensor cpu_contiguous(const at::Tensor& image) { return image.to(at::kCPU).contiguous(); }

// H×W×3 interleaved RGB bytes of an image (grey replicated).
std::vector<uint8_t> interleaved_rgb(const at::Tensor& image) {
  at::Tensor hwc = cpu_contiguous(image).permute({1, 2, 0});
  if (hwc.size(2) == 1) hwc = hwc.expand({hwc.size(0), hwc.size(1), 3});
  hwc = hwc.contiguous();
  const uint8_t* data = hwc.data_ptr<uint8_t>();
  return std::vector<uint8_t>(data, data + hwc.numel());
}

// Resampling along one axis as taps: output o = sum_k weight[o][k] * input[index[o][k]], with the
// same number of taps for every output (unused ones have weight 0). Linear in the image size, unlike
// a dense [out, in] matrix, which matters when a 4000-pixel photo is shrunk to 64.
struct Taps {
  std::vector<int64_t> index;
  std::vector<double> weight;
  int64_t per_output = 0;
};

// Area averaging: each output covers [o·s, (o+1)·s) of the input (s = in/out), pixels weighted by
// the length of their overlap with it.
Taps area_taps(int64_t in, int64_t out) {
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  Taps t;
  t.per_output = static_cast<int64_t>(std::ceil(scale)) + 1;
  for (int64_t o = 0; o < out; ++o) {
    const double lo = o * scale, hi = (o + 1) * scale;
    const int64_t first = static_cast<int64_t>(std::floor(lo));
    for (int64_t k = 0; k < t.per_output; ++k) {
      const int64_t i = std::min(first + k, in - 1);
      const double overlap = std::min<double>(hi, first + k + 1) - std::max<double>(lo, first + k);
      t.index.push_back(i);
      t.weight.push_back(first + k < in && overlap > 0 ? overlap / scale : 0.0);
    }
  }
  return t;
}

// Keys' cubic convolution kernel with a = -0.75 (OpenCV's INTER_CUBIC; PyTorch's bicubic).
double cubic(double x) {
  constexpr double a = -0.75;
  x = std::abs(x);
  if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

Taps cubic_taps(int64_t in, int64_t out) {
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  Taps t;
  t.per_output = 4;
  for (int64_t o = 0; o < out; ++o) {
    const double src = (o + 0.5) * scale - 0.5;  // half-pixel centres
    const int64_t i0 = static_cast<int64_t>(std::floor(src));
    const double frac = src - i0;
    for (int64_t k = -1; k <= 2; ++k) {
      t.index.push_back(std::clamp<int64_t>(i0 + k, 0, in - 1));  // edges replicated
      t.weight.push_back(cubic(k - frac));
    }
  }
  return t;
}

// Resamples dimension -2 of x [..., in, W] to `out` rows.
at::Tensor resample_rows(const at::Tensor& x, int64_t out) {
  const int64_t in = x.size(-2);
  const Taps t = out < in ? area_taps(in, out) : cubic_taps(in, out);
  const auto index = at::tensor(t.index, at::kLong).to(x.device());
  const auto weight = at::tensor(t.weight, at::kDouble).to(x.options()).view({out, t.per_output, 1});
  std::vector<int64_t> shape = x.sizes().vec();
  shape.insert(shape.end() - 1, t.per_output);
  shape[shape.size() - 3] = out;  // [..., out, taps, W]
  return (x.index_select(-2, index).reshape(shape) * weight).sum(-2);
}

#if TESSERA_WITH_OPENCV
// An 8-bit H×W×C Mat (C = 1 or 3; 3 in OpenCV's BGR order) as a uint8 C×H×W tensor in `channels`.
at::Tensor mat_to_tensor(cv::Mat mat, int channels, const std::string& name) {
  if (mat.depth() == CV_16U) {
    cv::Mat eight;
    mat.convertTo(eight, CV_8U, 1.0 / 257.0);
    mat = eight;
  }
  check(mat.depth() == CV_8U, "image '", name, "' has samples of OpenCV depth ", mat.depth(),
        " (only 8- and 16-bit integer images are read); convert it to 8-bit PNG or JPEG");
  if (mat.channels() == 4) {  // BGRA: alpha over white
    cv::Mat bgr(mat.rows, mat.cols, CV_8UC3);
    for (int y = 0; y < mat.rows; ++y) {
      const uint8_t* src = mat.ptr<uint8_t>(y);
      uint8_t* dst = bgr.ptr<uint8_t>(y);
      for (int x = 0; x < mat.cols; ++x) {
        const int alpha = src[4 * x + 3];
        for (int c = 0; c < 3; ++c)
          dst[3 * x + c] = static_cast<uint8_t>((src[4 * x + c] * alpha + 255 * (255 - alpha) + 127) / 255);
      }
    }
    mat = bgr;
  }
  check(mat.channels() == 1 || mat.channels() == 3, "image '", name, "' has ", mat.channels(),
        " channels (1, 3 or 4 are read)");
  if (channels == 0) channels = mat.channels();
  cv::Mat out;
  if (channels == 3)
    cv::cvtColor(mat, out, mat.channels() == 1 ? cv::COLOR_GRAY2RGB : cv::COLOR_BGR2RGB);
  else if (mat.channels() == 3)
    cv::cvtColor(mat, out, cv::COLOR_BGR2GRAY);
  else
    out = mat;
  if (!out.isContinuous()) out = out.clone();
  return at::from_blob(out.data, {out.rows, out.cols, out.channels()}, at::kByte)
      .permute({2, 0, 1})
      .contiguous();  // copies: `out` is freed on return
}

// An image tensor as an OpenCV Mat: BGR for colour, one channel for grey.
cv::Mat tensor_to_mat(const at::Tensor& image) {
  at::Tensor hwc = cpu_contiguous(image).permute({1, 2, 0}).contiguous();
  const int h = static_cast<int>(hwc.size(0)), w = static_cast<int>(hwc.size(1)), c = static_cast<int>(hwc.size(2));
  cv::Mat wrapped(h, w, CV_8UC(c), hwc.data_ptr<uint8_t>());
  cv::Mat out;
  if (c == 3)
    cv::cvtColor(wrapped, out, cv::COLOR_RGB2BGR);
  else
    out = wrapped.clone();
  return out;
}
#endif

#if !TESSERA_WITH_OPENCV
[[noreturn]] void no_opencv(const std::string& what) {
  fail(what,
       ": this build of Tessera has no OpenCV (TESSERA_WITH_OPENCV is OFF), so it cannot decode or "
       "encode JPEG/PNG files; install libopencv-dev (scripts/setup.sh does) and rebuild, or prepare "
       "image data on a machine that has it (PNG writing, the scenes generator and Fashion-MNIST work "
       "without it)");
}
#endif

}  // namespace

bool can_decode() {
#if TESSERA_WITH_OPENCV
  return true;
#else
  return false;
#endif
}

void check_image(const at::Tensor& image, const std::string& what) {
  check(image.defined(), what, " is missing (an undefined tensor)");
  check(image.scalar_type() == at::kByte, what, " must be uint8 C×H×W, got dtype ", image.scalar_type());
  check(image.dim() == 3, what, " must be uint8 C×H×W, got ", image.dim(), " dimensions ", image.sizes());
  check(image.size(0) == 1 || image.size(0) == 3, what, " must have 1 (grey) or 3 (RGB) channels first, got shape ",
        image.sizes());
  check(image.size(1) > 0 && image.size(2) > 0, what, " is empty: shape ", image.sizes());
}

at::Tensor read_image(const fs::path& path, int channels) {
  std::error_code ec;
  check(fs::is_regular_file(path, ec), "image file '", path.string(), "' not found (or not a regular file)");
  std::ifstream in(path, std::ios::binary);
  check(in.good(), "cannot open image file '", path.string(), "'");
  const auto size = fs::file_size(path, ec);
  check(!ec, "cannot read the size of image file '", path.string(), "': ", ec.message());
  std::vector<char> bytes(size);
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  check(in.gcount() == static_cast<std::streamsize>(size), "error reading image file '", path.string(), "' (",
        in.gcount(), " of ", size, " bytes read)");
  return decode_image(bytes.data(), bytes.size(), path.string(), channels);
}

at::Tensor decode_image(const void* data, size_t size, const std::string& name, int channels) {
  check(channels == 0 || channels == 1 || channels == 3, "decoding image '", name,
        "': channels must be 0 (as stored), "
        "1 (grey) or 3 (RGB), got ",
        channels);
  check(size > 0, "image file '", name, "' is empty (0 bytes)");
  const auto* p = static_cast<const uint8_t*>(data);
  const bool png = is_png(p, size), jpeg = is_jpeg(p, size);
  check(!png || png_complete(p, size), "image file '", name, "' is a truncated PNG (", human_size(size),
        ", no IEND chunk): re-download or re-export it");
  check(!jpeg || jpeg_complete(p, size), "image file '", name, "' is a truncated JPEG (", human_size(size),
        ", no end-of-image marker after the scan data): re-download or re-export it");
#if TESSERA_WITH_OPENCV
  // EXIF orientation is applied for every flag but IMREAD_UNCHANGED, which keeps PNG's alpha.
  const int flags = jpeg ? (cv::IMREAD_ANYCOLOR | cv::IMREAD_ANYDEPTH) : cv::IMREAD_UNCHANGED;
  cv::Mat mat;
  check(size <= INT32_MAX, "image file '", name, "' is over 2 GiB");
  try {
    const cv::Mat buffer(1, static_cast<int>(size), CV_8U, const_cast<uint8_t*>(p));
    mat = cv::imdecode(buffer, flags);
  } catch (const cv::Exception& e) {
    fail("cannot decode image file '", name, "': ", e.what());
  }
  check(!mat.empty() && mat.rows > 0 && mat.cols > 0, "cannot decode image file '", name, "' (", human_size(size),
        "): not an image format OpenCV reads, or corrupt");
  try {
    return mat_to_tensor(mat, channels, name);
  } catch (const cv::Exception& e) {
    fail("cannot convert image file '", name, "': ", e.what());
  }
#else
  no_opencv(str("cannot decode image file '", name, "'"));
#endif
}

std::vector<uint8_t> encode_png(const at::Tensor& image) {
  check_image(image, "encode_png: the image");
  check(image.size(1) <= 65535 && image.size(2) <= 65535, "encode_png: image ", image.sizes(),
        " is over PNG's 65535-pixel side limit here");
  const std::vector<uint8_t> rgb = interleaved_rgb(image);
  return encode_png_rgb(rgb.data(), static_cast<int>(image.size(2)), static_cast<int>(image.size(1)));
}

void write_png(const fs::path& path, const at::Tensor& image) {
  const std::vector<uint8_t> png = encode_png(image);
  write_bytes_atomic(path, png.data(), png.size());
}

std::vector<uint8_t> encode_jpeg(const at::Tensor& image, int quality) {
  check_image(image, "encode_jpeg: the image");
  check(quality >= 1 && quality <= 100, "encode_jpeg: quality must be 1..100, got ", quality);
#if TESSERA_WITH_OPENCV
  std::vector<uint8_t> out;
  try {
    check(cv::imencode(".jpg", tensor_to_mat(image), out, {cv::IMWRITE_JPEG_QUALITY, quality}),
          "encode_jpeg: OpenCV could not encode a ", image.sizes(), " image");
  } catch (const cv::Exception& e) {
    fail("encode_jpeg: ", e.what());
  }
  return out;
#else
  no_opencv("encode_jpeg");
#endif
}

at::Tensor resize(const at::Tensor& image, int64_t height, int64_t width) {
  check(image.defined() && image.dim() >= 2, "resize: expected an image [..., H, W], got ",
        image.defined() ? str(image.sizes()) : std::string("an undefined tensor"));
  check(height > 0 && width > 0, "resize: the target size must be positive, got ", height, "x", width);
  const bool is_uint8 = image.scalar_type() == at::kByte;
  check(is_uint8 || at::isFloatingType(image.scalar_type()), "resize: expected uint8 or floating-point pixels, got ",
        image.scalar_type());
  const int64_t in_h = image.size(-2), in_w = image.size(-1);
  check(in_h > 0 && in_w > 0, "resize: the image is empty: shape ", image.sizes());
  if (in_h == height && in_w == width) return image.clone();
  const at::ScalarType compute = is_uint8 ? at::kFloat : image.scalar_type();
  at::Tensor x = image.to(compute);
  if (in_h != height) x = resample_rows(x, height);
  if (in_w != width) x = resample_rows(x.transpose(-1, -2), width).transpose(-1, -2);
  if (is_uint8) x = x.round().clamp(0, 255).to(at::kByte);
  return x.contiguous();
}

at::Tensor center_crop(const at::Tensor& image, int64_t height, int64_t width) {
  check(image.defined() && image.dim() >= 2, "center_crop: expected an image [..., H, W]");
  const int64_t in_h = image.size(-2), in_w = image.size(-1);
  check(height > 0 && width > 0 && height <= in_h && width <= in_w, "center_crop: cannot cut ", height, "x", width,
        " out of a ", in_h, "x", in_w, " image (resize it first, e.g. resize_center_crop)");
  const int64_t top = (in_h - height) / 2, left = (in_w - width) / 2;
  return image.narrow(-2, top, height).narrow(-1, left, width).contiguous();
}

at::Tensor resize_center_crop(const at::Tensor& image, int64_t size) {
  check(size > 0, "resize_center_crop: size must be positive, got ", size);
  check(image.defined() && image.dim() >= 2, "resize_center_crop: expected an image [..., H, W]");
  const int64_t h = image.size(-2), w = image.size(-1);
  check(h > 0 && w > 0, "resize_center_crop: the image is empty: shape ", image.sizes());
  // The shorter side becomes `size`; the longer one is rounded and never below it.
  int64_t nh = size, nw = size;
  if (h < w)
    nw = std::max<int64_t>(size, std::llround(static_cast<double>(w) * size / h));
  else if (w < h)
    nh = std::max<int64_t>(size, std::llround(static_cast<double>(h) * size / w));
  return center_crop(resize(image, nh, nw), size, size);
}

at::Tensor to_float(const at::Tensor& image) {
  check(image.defined() && image.scalar_type() == at::kByte, "to_float: expected uint8 pixels, got ",
        image.defined() ? str(image.scalar_type()) : std::string("an undefined tensor"));
  return image.to(at::kFloat).div(127.5).sub(1.0);
}

at::Tensor to_uint8(const at::Tensor& x) {
  check(x.defined() && at::isFloatingType(x.scalar_type()), "to_uint8: expected floating-point values in [-1, 1], got ",
        x.defined() ? str(x.scalar_type()) : std::string("an undefined tensor"));
  return x.detach().to(at::kCPU, at::kFloat).add(1.0).mul(127.5).round().clamp(0, 255).to(at::kByte);
}

at::Tensor make_grid(const std::vector<at::Tensor>& images, int64_t columns, int64_t padding, uint8_t pad_value) {
  check(!images.empty(), "make_grid: no images");
  check(columns > 0, "make_grid: columns must be positive, got ", columns);
  check(padding >= 0, "make_grid: padding must be >= 0, got ", padding);
  int64_t cell_h = 0, cell_w = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    check_image(images[i], str("make_grid: image ", i));
    cell_h = std::max(cell_h, images[i].size(1));
    cell_w = std::max(cell_w, images[i].size(2));
  }
  const int64_t n = static_cast<int64_t>(images.size());
  const int64_t cols = std::min(columns, n), rows = (n + cols - 1) / cols;
  at::Tensor grid =
      at::full({3, rows * (cell_h + padding) + padding, cols * (cell_w + padding) + padding}, pad_value, at::kByte);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& img = images[i];
    const int64_t h = img.size(1), w = img.size(2);
    const int64_t top = padding + (i / cols) * (cell_h + padding) + (cell_h - h) / 2;
    const int64_t left = padding + (i % cols) * (cell_w + padding) + (cell_w - w) / 2;
    grid.narrow(1, top, h).narrow(2, left, w).copy_(img.to(at::kCPU).expand({3, h, w}));
  }
  return grid;
}

void write_grid_png(const fs::path& path, const std::vector<at::Tensor>& images, int64_t columns, int64_t padding) {
  write_png(path, make_grid(images, columns, padding));
}

void write_grid_png(const fs::path& path, const at::Tensor& batch, int64_t columns, int64_t padding) {
  check(batch.defined() && batch.dim() == 4, "write_grid_png: expected a batch [N, C, H, W], got ",
        batch.defined() ? str(batch.sizes()) : std::string("an undefined tensor"));
  const at::Tensor pixels = batch.scalar_type() == at::kByte ? batch.to(at::kCPU) : to_uint8(batch);
  std::vector<at::Tensor> images;
  for (int64_t i = 0; i < pixels.size(0); ++i) images.push_back(pixels[i]);
  write_grid_png(path, images, columns, padding);
}

}  // namespace tessera::image
