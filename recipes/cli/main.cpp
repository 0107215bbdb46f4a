#include "recipes/cli/commands.h"

int main(int argc, char** argv) {
  return tessera::cli::main_dispatch(tessera::cli::Args(argv + 1, argv + argc));
}
