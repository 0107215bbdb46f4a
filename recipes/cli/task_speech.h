// The speech artifact recipes (tasks.h), run in this order by default:
//   task: speech_corpus  (recipes/speech/corpus.yaml)  espeak-ng speech-text corpus: {train,val}/*.wav + .tsv
//   task: speech_units   (recipes/speech/units.yaml)   MFCC/log-mel features + k-means -> kmeans.safetensors,
//                                                      stats.json (cluster usage, distortion, run lengths)
//   task: vocoder        (recipes/speech/vocoder.yaml) units -> log-mel network + Griffin-Lim ->
//                                                      vocoder.safetensors, eval.json (MCD), examples/*.wav
// Each skips when its outputs exist and were made with the same config (--force starts over); a run
// directory holding outputs of another config is an error rather than a silent mix.
#pragma once

#include "recipes/cli/tasks.h"

namespace tessera::cli {

int speech_corpus_task(const TaskContext& context);
int speech_units_task(const TaskContext& context);
int vocoder_task(const TaskContext& context);

// `tessera generate decode-units --vocoder RUN --units FILE --out x.wav`: unit ids (whitespace
// separated text, one unit per 20 ms frame) -> WAV through a trained vocoder.
int decode_units_command(const std::vector<std::string>& args);

}  // namespace tessera::cli
