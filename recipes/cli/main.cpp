#include <cstdio>

#include "recipes/cli/commands.h"

int main(int argc, char** argv) {
  // Progress lines reach logs and pipes as they happen, not when a buffer fills.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  return tessera::cli::main_dispatch(tessera::cli::Args(argv + 1, argv + argc));
}
