// The Hugging Face safetensors format (https://github.com/huggingface/safetensors), read and
// written without any dependency beyond LibTorch and nlohmann_json:
//
//   [8 bytes]  N, unsigned little-endian: the header length
//   [N bytes]  JSON header, padded with spaces so that N % 8 == 0:
//              {"__metadata__": {string: string},                      (optional)
//               "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   [rest]     tensor data: row-major, little-endian, offsets relative to the end of the header
//
// Files written here list and store tensors sorted by name (byte order), back to back; they load
// with `safetensors.torch.load_file` and Hugging Face tools. Loading accepts any valid file.
// dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL, plus U16 U32 U64 F8_E4M3 F8_E5M2.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace tessera::io {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes `tensors` (any device, any strides; copied to contiguous CPU memory one at a time) and
// optional string metadata. Names must be unique and not "__metadata__". The file is written to
// a temporary name in the same folder, fsynced, then renamed over `path` (and the folder fsynced):
// readers see the old file or the complete new one, never a partial one. The parent folder is
// created if missing. Throws tessera::Error on bad input or I/O failure (nothing is left behind).
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  std::map<std::string, at::Tensor> tensors;  // CPU tensors owning their memory
  std::map<std::string, std::string> metadata;
};

// Reads and validates the whole file. Every malformed input (missing file, short file, header
// length beyond the file, invalid JSON, unknown dtype, shape/size mismatch, offsets out of
// bounds or overlapping, truncated data, BOOL bytes other than 0/1) is a tessera::Error whose
// message names the file and the problem.
SafetensorsFile load_safetensors(const std::filesystem::path& path);

// Tensor names (sorted), reading and validating only the header.
std::vector<std::string> list_safetensors(const std::filesystem::path& path);

// The safetensors dtype string for a scalar type ("F32", ...); tessera::Error if it has none.
std::string safetensors_dtype_name(at::ScalarType type);

}  // namespace tessera::io
