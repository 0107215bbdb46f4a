// The IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed), and Fashion-MNIST itself as a
// small real-image set with class-name captions, from the Debian package `dataset-fashion-mnist`.
//
// IDX: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
// 0x0E float64), the number of dimensions, each dimension as a big-endian uint32, then the values in
// row-major order, big-endian.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace tessera::image {

// Reads an IDX file (gzip'd or not: detected from its content) into a CPU tensor of the file's type
// and shape. `max_items` > 0 reads only the first that many entries of the first dimension. A bad
// magic number or type, an impossible shape, a file shorter than its header promises, or trailing
// bytes after the data are errors naming the file.
at::Tensor read_idx(const std::filesystem::path& path, int64_t max_items = 0);

// Where the Debian package installs the files (t10k-images-idx3-ubyte.gz and the like).
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// The ten classes in label order: "T-shirt/top", "Trouser", ..., "Ankle boot".
const std::vector<std::string>& fashion_mnist_classes();
// Paraphrased captions for a label ("a photo of a pair of trousers", ...); an error outside 0..9.
std::vector<std::string> fashion_mnist_captions(int64_t label);

struct LabeledImages {
  at::Tensor images;  // uint8 N×1×H×W (grey)
  at::Tensor labels;  // int64 N
  std::vector<std::string> class_names;
};

// Whether `dir` holds both splits' image and label files.
bool fashion_mnist_available(const std::filesystem::path& dir = kFashionMnistDir);
// A split ("train": 60000 images, "test": 10000) of 28×28 images with labels; `max_items` > 0 reads
// only the first that many. A missing file is an error saying which package provides it.
LabeledImages read_fashion_mnist(const std::string& split, const std::filesystem::path& dir = kFashionMnistDir,
                                 int64_t max_items = 0);
// The same for any IDX image file (N×H×W uint8) and its label file (N uint8): counts must agree.
LabeledImages read_idx_images(const std::filesystem::path& images, const std::filesystem::path& labels,
                              int64_t max_items = 0);

}  // namespace tessera::image
