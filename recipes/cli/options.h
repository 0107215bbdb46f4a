// Command-line plumbing shared by the CLI's verbs (commands.cpp) and the artifact tasks' sub-commands
// (task_*.cpp): one way to parse options, one kind of usage error.
#pragma once

#include <cxxopts.hpp>

#include <string>

#include "core/error.h"
#include "recipes/cli/commands.h"

namespace tessera::cli {

// Thrown for bad command lines; main_dispatch turns it into exit code 2.
struct UsageError : Error {
  using Error::Error;
};

// Parses `args` (the words after the verb) with cxxopts; --help prints the help and returns false. A bad
// option is a UsageError (with a hint when a config override was written with dashes).
bool parse_options(cxxopts::Options& options, const Args& args, cxxopts::ParseResult& result);

// The value of a required --name option; a UsageError naming it when absent.
std::string required_option(const cxxopts::ParseResult& r, const char* name, const cxxopts::Options& options);

}  // namespace tessera::cli
