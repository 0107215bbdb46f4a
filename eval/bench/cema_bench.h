// `tessera bench cema`: the cost of Megalodon's complex EMA computed three ways (core/nn/cema.h): the
// FFT convolution (training path), the chunked scan (Toeplitz GEMMs per segment plus a carried
// state) and the sequential recurrence, forward and forward+backward, per sequence length.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace tessera {

struct CemaBenchOptions {
  int64_t dim = 1024;
  int64_t ndim = 16;
  int64_t batch_size = 4;
  std::vector<int64_t> seq_lens{4096, 32768};
  std::vector<std::string> modes{"fft", "scan"};  // fft | scan | sequential
  int64_t scan_chunk = 256;
  int64_t warmup = 3;
  int64_t steps = 10;
  std::string precision = "auto";  // bf16 inputs (the EMA itself always runs in float32) or fp32
  std::string device = "auto";
};

struct CemaBenchResult {
  nlohmann::json json;
  std::string summary;
};

CemaBenchResult bench_cema(const CemaBenchOptions& options);

}  // namespace tessera
