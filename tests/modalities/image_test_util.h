// Tiny image autoencoder fixtures shared by the image_vq and image_latent tests: a handful of scene
// images and nets small enough to train for a hundred steps on two CPU cores in a few seconds.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "modalities/image/autoencoder.h"
#include "modalities/image/autoencoder_train.h"
#include "modalities/image/image_io.h"
#include "modalities/image/scenes.h"

namespace tessera::testing {

// `n` generated scenes (drawn at 32 px), resized to size × size: uint8 [n, 3, size, size].
inline at::Tensor tiny_scenes(int64_t n, int64_t size, int64_t first = 0) {
  image::SceneConfig config;
  config.size = 32;
  std::vector<at::Tensor> images;
  for (int64_t i = 0; i < n; ++i)
    images.push_back(image::resize_center_crop(image::generate_scene(config, first + i).image, size));
  return at::stack(images);
}

inline image::ConvNetConfig tiny_net() {
  image::ConvNetConfig net;
  net.channels = 8;
  net.max_channels = 16;
  net.downsample = 2;
  net.res_blocks = 1;
  return net;
}

inline image::AutoencoderTrainConfig tiny_train(int64_t steps) {
  image::AutoencoderTrainConfig t;
  t.steps = steps;
  t.batch_size = 8;
  t.lr = 3e-3;
  t.warmup_steps = 5;
  t.min_lr_ratio = 0.3;
  t.device = "cpu";
  t.log_every = 1000;
  return t;
}

// A quiet CPU run of `steps` into `dir`.
inline image::AutoencoderRun tiny_run(const std::filesystem::path& dir, const std::string& task,
                                      const std::string& artifact_file, int64_t steps) {
  image::AutoencoderRun run;
  run.task = task;
  run.run_dir = dir;
  run.artifact_file = artifact_file;
  run.train = tiny_train(steps);
  run.quiet = true;
  return run;
}

}  // namespace tessera::testing
