// The image tokenizer tasks (`task: vq_tokenizer`, `task: vae`) and the `tessera generate
// decode-image` / `encode-image` sub-modes that turn image token files into PNGs and back.
#pragma once

#include "recipes/cli/commands.h"
#include "recipes/cli/tasks.h"

namespace tessera::cli {

// Train the artifact a recipe describes into its run_dir (tokenizer.safetensors / vae.safetensors,
// metrics.jsonl, eval.json, reconstructions.png); a finished run is skipped unless --force.
int vq_tokenizer_task(const TaskContext& context);
int vae_task(const TaskContext& context);

// tessera generate decode-image --tokenizer RUN_DIR|FILE --tokens FILE --out IMAGE.png
// tokens: one image per line, ids separated by whitespace and/or commas (a JSON list works too).
int decode_image_command(const Args& args);
// tessera generate encode-image --tokenizer RUN_DIR|FILE --out TOKENS.txt IMAGE... (or --scenes N)
int encode_image_command(const Args& args);

}  // namespace tessera::cli
