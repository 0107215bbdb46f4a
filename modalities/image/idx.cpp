#include "modalities/image/idx.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace tessera::image {
namespace fs = std::filesystem;

namespace {

// A gzip or plain file read through zlib (gzread passes plain files through unchanged).
class GzFile {
 public:
  explicit GzFile(const fs::path& path) : path_(path.string()) {
    std::error_code ec;
    check(fs::is_regular_file(path, ec), "IDX file '", path_, "' not found (or not a regular file)");
    file_ = gzopen(path_.c_str(), "rb");
    check(file_ != nullptr, "cannot open IDX file '", path_, "'");
    gzbuffer(file_, 1 << 17);
  }
  ~GzFile() {
    if (file_) gzclose(file_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  // Reads up to `size` bytes; returns how many were read (fewer only at the end of the data).
  size_t read(void* out, size_t size) {
    size_t done = 0;
    while (done < size) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(size - done, 1u << 24));
      const int n = gzread(file_, static_cast<char*>(out) + done, chunk);
      if (n < 0) {
        int code = 0;
        const char* message = gzerror(file_, &code);
        fail("IDX file '", path_, "' is corrupt after ", done, " bytes of data: ", message ? message : "zlib error");
      }
      if (n == 0) {
        // A gzip stream cut short reads as a clean end in some zlib versions; ask.
        int code = 0;
        const char* message = gzerror(file_, &code);
        check(code == Z_OK || code == Z_STREAM_END, "IDX file '", path_, "' is corrupt or truncated (",
              message ? message : "zlib error", ")");
        break;
      }
      done += static_cast<size_t>(n);
    }
    return done;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

struct IdxType {
  uint8_t code;
  at::ScalarType dtype;
  size_t bytes;
  const char* name;
};
const IdxType kTypes[] = {{0x08, at::kByte, 1, "uint8"},    {0x09, at::kChar, 1, "int8"},
                          {0x0B, at::kShort, 2, "int16"},   {0x0C, at::kInt, 4, "int32"},
                          {0x0D, at::kFloat, 4, "float32"}, {0x0E, at::kDouble, 8, "float64"}};

const char* const kClasses[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
// What a caption calls each class, with its article.
const char* const kClassPhrases[] = {"a t-shirt", "a pair of trousers", "a pullover", "a dress",
                                     "a coat",    "a sandal",           "a shirt",    "a sneaker",
                                     "a bag",     "an ankle boot"};

fs::path fashion_file(const fs::path& dir, const std::string& split, const char* kind) {
  return dir / ((split == "train" ? "train-" : "t10k-") + std::string(kind) + "-idx" + (kind[0] == 'i' ? "3" : "1") +
                "-ubyte.gz");
}

}  // namespace

at::Tensor read_idx(const fs::path& path, int64_t max_items) {
  check(max_items >= 0, "read_idx: max_items must be >= 0, got ", max_items);
  GzFile in(path);
  const std::string& name = in.path();
  uint8_t magic[4];
  const size_t got = in.read(magic, 4);
  check(got == 4, "IDX file '", name, "' is ", got == 0 ? "empty" : "too short for a header", " (", got,
        " bytes); an IDX file starts with 00 00 <type> <dims>");
  check(magic[0] == 0 && magic[1] == 0, "IDX file '", name, "' has a bad magic number (first bytes ", int{magic[0]},
        " ", int{magic[1]}, ", expected 0 0): not an IDX file");
  const IdxType* type = nullptr;
  for (const auto& t : kTypes)
    if (t.code == magic[2]) type = &t;
  check(type != nullptr, "IDX file '", name, "' has unknown type code 0x", std::hex, int{magic[2]}, std::dec,
        " (known: 08 uint8, 09 int8, 0B int16, 0C int32, 0D float32, 0E float64)");
  const int ndim = magic[3];
  check(ndim >= 1, "IDX file '", name, "' declares 0 dimensions");

  std::vector<uint8_t> dims_raw(4 * static_cast<size_t>(ndim));
  const size_t dims_got = in.read(dims_raw.data(), dims_raw.size());
  check(dims_got == dims_raw.size(), "IDX file '", name, "' is truncated in its header: ", ndim, " dimensions need ",
        dims_raw.size(), " bytes, found ", dims_got);
  std::vector<int64_t> shape;
  uint64_t per_item = 1;                          // values per entry of the first dimension
  constexpr uint64_t kLimit = uint64_t{1} << 40;  // 1 TiB: anything larger is a corrupt header
  for (int d = 0; d < ndim; ++d) {
    const uint64_t n = be32(&dims_raw[4 * d]);
    shape.push_back(static_cast<int64_t>(n));
    if (d > 0) {
      check(n == 0 || per_item <= kLimit / n, "IDX file '", name, "' declares an impossible shape (over 1 TiB)");
      per_item *= n;
    }
  }
  const uint64_t items = static_cast<uint64_t>(shape[0]);
  check(items == 0 || per_item == 0 || items <= kLimit / per_item / type->bytes, "IDX file '", name,
        "' declares an impossible shape (over 1 TiB)");
  const bool partial = max_items > 0 && static_cast<uint64_t>(max_items) < items;
  if (partial) shape[0] = max_items;
  const uint64_t count = static_cast<uint64_t>(shape[0]) * per_item;
  const uint64_t bytes = count * type->bytes;

  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(type->dtype));
  auto* data = static_cast<uint8_t*>(out.data_ptr());
  const size_t data_got = in.read(data, bytes);
  std::string shape_text;
  for (size_t d = 0; d < shape.size(); ++d) shape_text += (d ? "x" : "") + std::to_string(shape[d]);
  check(data_got == bytes, "IDX file '", name, "' is truncated: a ", type->name, " array of shape ", shape_text,
        " needs ", bytes, " bytes of data, found ", data_got);
  if (!partial) {
    uint8_t extra;
    check(in.read(&extra, 1) == 0, "IDX file '", name, "' has bytes after its ", shape_text, " ", type->name,
          " data: a wrong header or a concatenated file");
  }
  if (type->bytes > 1) {  // big-endian on disk
    for (uint64_t i = 0; i < count; ++i) std::reverse(data + i * type->bytes, data + (i + 1) * type->bytes);
  }
  return out;
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names(std::begin(kClasses), std::end(kClasses));
  return names;
}

std::vector<std::string> fashion_mnist_captions(int64_t label) {
  check(label >= 0 && label < 10, "Fashion-MNIST label ", label, " is outside 0..9");
  const std::string x = kClassPhrases[label];
  return {x, "a photo of " + x, "a grayscale photo of " + x, "a product picture of " + x,
          "a small black and white image of " + x};
}

bool fashion_mnist_available(const fs::path& dir) {
  std::error_code ec;
  for (const char* split : {"train", "test"})
    for (const char* kind : {"images", "labels"})
      if (!fs::is_regular_file(fashion_file(dir, split, kind), ec)) return false;
  return true;
}

LabeledImages read_idx_images(const fs::path& images_path, const fs::path& labels_path, int64_t max_items) {
  at::Tensor images = read_idx(images_path, max_items);
  at::Tensor labels = read_idx(labels_path, max_items);
  check(images.scalar_type() == at::kByte && images.dim() == 3, "IDX image file '", images_path.string(),
        "' must hold uint8 N×H×W images, got ", images.scalar_type(), " ", images.sizes());
  check(labels.scalar_type() == at::kByte && labels.dim() == 1, "IDX label file '", labels_path.string(),
        "' must hold uint8 N labels, got ", labels.scalar_type(), " ", labels.sizes());
  check(images.size(0) == labels.size(0), "IDX files disagree: '", images_path.string(), "' has ", images.size(0),
        " images but '", labels_path.string(), "' has ", labels.size(0), " labels");
  LabeledImages out;
  out.images = images.unsqueeze(1).contiguous();
  out.labels = labels.to(at::kLong);
  return out;
}

LabeledImages read_fashion_mnist(const std::string& split, const fs::path& dir, int64_t max_items) {
  check(split == "train" || split == "test", "Fashion-MNIST split must be 'train' or 'test', got '", split, "'");
  const fs::path images = fashion_file(dir, split, "images"), labels = fashion_file(dir, split, "labels");
  std::error_code ec;
  for (const fs::path& p : {images, labels})
    check(fs::is_regular_file(p, ec), "Fashion-MNIST file '", p.string(),
          "' not found; install the Debian package "
          "dataset-fashion-mnist (scripts/setup.sh does) or point the dataset at a folder holding the IDX files");
  LabeledImages out = read_idx_images(images, labels, max_items);
  check(out.labels.numel() == 0 || out.labels.max().item<int64_t>() < 10, "Fashion-MNIST labels in '", labels.string(),
        "' go above 9");
  out.class_names = fashion_mnist_classes();
  return out;
}

}  // namespace tessera::image
