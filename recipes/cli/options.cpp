#include "recipes/cli/options.h"

#include <iostream>
#include <vector>

namespace tessera::cli {

bool parse_options(cxxopts::Options& options, const Args& args, cxxopts::ParseResult& result) {
  std::vector<std::string> storage = args;
  std::vector<char*> argv;
  std::string program = options.program();
  argv.push_back(program.data());
  for (auto& a : storage) argv.push_back(a.data());
  try {
    result = options.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const cxxopts::exceptions::exception& e) {
    std::string hint;
    for (const auto& a : args)
      if (a.rfind("--", 0) == 0 && a.find('.') != std::string::npos && a.find('=') != std::string::npos)
        hint = "; config overrides take no dashes: write " + a.substr(2);
    throw UsageError(str(e.what(), hint, " (see `", options.program(), " --help`)"));
  }
  if (result.count("help")) {
    std::cout << options.help() << std::endl;
    return false;
  }
  return true;
}

std::string required_option(const cxxopts::ParseResult& r, const char* name, const cxxopts::Options& options) {
  if (!r.count(name)) throw UsageError(str("missing --", name, " (see `", options.program(), " --help`)"));
  return r[name].as<std::string>();
}

}  // namespace tessera::cli
