#include "core/train/metrics.h"

#include "core/error.h"

namespace tessera {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path), out_(path, std::ios::app) {
  check(static_cast<bool>(out_), "cannot open metrics file '", path, "' for writing");
}

void MetricsWriter::write(const nlohmann::json& record) {
  out_ << record.dump() << '\n';
  out_.flush();
}

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::ifstream in(path);
  check(static_cast<bool>(in), "cannot read metrics file '", path, "'");
  std::vector<nlohmann::json> records;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    try {
      records.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception& e) {
      fail(path, ":", line_no, ": malformed metrics line: ", e.what());
    }
  }
  return records;
}

}  // namespace tessera
