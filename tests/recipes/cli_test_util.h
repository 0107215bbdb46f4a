// Runs the `tessera` CLI in-process for the recipe tests, capturing what it prints.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "recipes/cli/commands.h"

namespace tessera {
// Unnamed: a function named `cli` beside the namespace tessera::cli must live in an inner scope.
namespace {

// `tessera args...`: the exit code; stdout and stderr into `out` and `err` when given.
inline int cli(const std::vector<std::string>& args, std::string* out = nullptr, std::string* err = nullptr) {
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const int rc = cli::main_dispatch(args);
  const std::string o = ::testing::internal::GetCapturedStdout(), e = ::testing::internal::GetCapturedStderr();
  if (out) *out = o;
  if (err) *err = e;
  return rc;
}

}  // namespace
}  // namespace tessera
