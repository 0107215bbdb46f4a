// The verbs of the `tessera` binary. Each takes its own arguments (argv after the verb) and returns a
// process exit code; tests call them directly.
#pragma once

#include <string>
#include <vector>

namespace tessera::cli {

using Args = std::vector<std::string>;

int run_command(const Args& args);
int train_command(const Args& args);
int prepare_command(const Args& args);
int eval_command(const Args& args);
int generate_command(const Args& args);
int info_command(const Args& args);
int bench_command(const Args& args);
int patch_command(const Args& args);

// Dispatches `tessera VERB ...`; prints errors (with a hint) and returns the exit code:
// 0 success, 1 a failure the message explains, 2 a usage error.
int main_dispatch(const Args& argv);

}  // namespace tessera::cli
