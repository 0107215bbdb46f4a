// Machine-readable metrics: one JSON object per line, appended and flushed as they happen.
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace tessera {

class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);  // appends (a resumed run continues the file)
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

std::vector<nlohmann::json> read_metrics(const std::string& path);

}  // namespace tessera
