#pragma once

#include <cstdint>
#include <string>

namespace tessera {

struct TrainConfig {
  int64_t steps = 0;
  double flops_budget = 0;  // when > 0, steps = budget / (training FLOPs per step), set by the recipe layer
  int64_t grad_accum = 1;
  double lr = 3e-4;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 100;
  std::string schedule = "cosine";
  double decay_fraction = 0.2;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;
  std::string precision = "auto";
  std::string device = "auto";
  int64_t eval_every = 0;
  int64_t eval_batches = 16;
  int64_t checkpoint_every = 0;
  int64_t keep_checkpoints = 3;
  int64_t log_every = 10;
  int64_t threads = 0;

  template <class V>
  void fields(V& v) {
    v.optional("steps", steps, "optimizer steps (0: derived from flops_budget)");
    v.optional("flops_budget", flops_budget,
               "training FLOPs to spend (core/flops convention); when set, steps follow from it");
    v.optional("grad_accum", grad_accum, "micro-batches per optimizer step");
    v.optional("lr", lr, "peak learning rate");
    v.optional("min_lr_ratio", min_lr_ratio, "final learning rate as a fraction of the peak");
    v.optional("warmup_steps", warmup_steps, "linear warm-up steps");
    v.choice("schedule", schedule, {"cosine", "wsd", "constant"},
             "after warm-up: cosine decay, warmup-stable-decay (linear decay over the last decay_fraction), or constant");
    v.optional("decay_fraction", decay_fraction, "share of the steps spent decaying (wsd)");
    v.optional("weight_decay", weight_decay, "AdamW decoupled weight decay (matrices only; not norms or biases)");
    v.optional("beta1", beta1, "AdamW beta1");
    v.optional("beta2", beta2, "AdamW beta2");
    v.optional("eps", eps, "AdamW epsilon");
    v.optional("grad_clip", grad_clip, "clip the global gradient norm to this (0: off)");
    v.choice("precision", precision, {"auto", "fp32", "bf16"}, "auto: bf16 autocast on CUDA, fp32 on CPU");
    v.choice("device", device, {"auto", "cpu", "cuda"}, "auto: CUDA when available");
    v.optional("eval_every", eval_every, "validation every N steps (0: only at the end)");
    v.optional("eval_batches", eval_batches, "validation batches per evaluation (0: the whole split)");
    v.optional("checkpoint_every", checkpoint_every, "checkpoint every N steps (0: only at the end)");
    v.optional("keep_checkpoints", keep_checkpoints, "keep the last K checkpoints (0: all)");
    v.optional("log_every", log_every, "log a metrics line every N steps");
    v.optional("threads", threads, "CPU intra-op threads (0: LibTorch's default)");
  }
};

}  // namespace tessera
