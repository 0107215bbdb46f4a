#!/usr/bin/env python3
"""PyTorch reference for `tessera bench train`: the same dense Llama-style model and training step.

Model: token embedding -> n_layers x [RMSNorm -> GQA self-attention with half-split RoPE through
F.scaled_dot_product_attention (causal) -> residual, RMSNorm -> SwiGLU -> residual] -> RMSNorm ->
output projection. Hidden size 8/3*dim rounded up to 256 (Llama). Init N(0, 0.02), residual output
projections N(0, 0.02/sqrt(2L)).

Step: bf16 autocast forward (CUDA), float32 cross-entropy, backward, clip_grad_norm(1.0), AdamW
(lr 1e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only), zero_grad(set_to_none).

Modes:
  eager        default AdamW (foreach implementation)
  eager-fused  AdamW(fused=True), the kernel Tessera calls (at::_fused_adamw_)
  compile      torch.compile(model) + AdamW(fused=True)

Prints one JSON object with the same keys as `tessera bench train --json`.
Read for facts only; no code here is shared with the C++ implementation.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def swiglu_hidden(dim, multiple_of=256):
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # One fused kernel (as torch.nn.RMSNorm); the residual stream is float32 under autocast.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rope_tables(head_dim, max_len, theta=10000.0):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x, cos, sin):
    # x: [B, H, T, Dh], half-split pairing (dimension i with i + Dh/2), as Llama's HF layout.
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[: x.shape[2]].to(x.dtype), sin[: x.shape[2]].to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads):
        super().__init__()
        self.n_heads, self.n_kv = n_heads, n_kv_heads
        self.head_dim = dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, hidden):
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.ffn_norm = RMSNorm(dim)
        self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x, cos, sin):
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Dense(nn.Module):
    def __init__(self, dim, n_layers, n_heads, n_kv_heads, vocab, max_len, tie=False):
        super().__init__()
        self.hidden = swiglu_hidden(dim)
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim, n_heads, n_kv_heads, self.hidden) for _ in range(n_layers))
        self.norm = RMSNorm(dim)
        self.tie = tie
        self.output = None if tie else nn.Linear(dim, vocab, bias=False)
        cos, sin = rope_tables(dim // n_heads, max_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        out_std = 0.02 / math.sqrt(2 * n_layers)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                residual = name.endswith("attention.wo.weight") or name.endswith("feed_forward.w2.weight")
                nn.init.normal_(p, 0.0, out_std if residual else 0.02)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, self.cos, self.sin)
        h = self.norm(h)
        return F.linear(h, self.tok_embeddings.weight) if self.tie else self.output(h)


def train_flops_per_token(model, dim, n_layers, n_heads, n_kv, vocab, seq_len):
    # Same convention as core/flops: 6 FLOPs per matmul parameter per token, plus causal attention
    # (QK^T and AV, 2 * 2 * attended * dim forward per layer, x3 for training) with a mean of
    # (T + 1) / 2 attended keys per query.
    kv_dim = n_kv * (dim // n_heads)
    per_layer = dim * dim + 2 * dim * kv_dim + dim * dim + 3 * dim * model.hidden
    matmul = n_layers * per_layer + vocab * dim
    attended = (seq_len + 1) / 2.0
    return matmul, 6.0 * matmul + 12.0 * n_layers * dim * attended


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["eager", "eager-fused", "compile"], default="eager")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--n-layers", type=int, default=12)
    ap.add_argument("--n-heads", type=int, default=16)
    ap.add_argument("--n-kv-heads", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tie-embeddings", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", type=int, default=0,
                    help="after timing, profile this many steps and print the per-kernel GPU time table to stderr")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    n_kv = args.n_kv_heads or args.n_heads
    model = Dense(args.dim, args.n_layers, args.n_heads, n_kv, args.vocab_size, args.seq_len,
                  args.tie_embeddings).to(dev)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    fused = args.mode != "eager" and dev.type == "cuda"
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    forward = torch.compile(model) if args.mode == "compile" else model
    bf16 = dev.type == "cuda"

    batches = []
    for _ in range(4):
        row = torch.randint(args.vocab_size, (args.batch_size, args.seq_len + 1))
        batches.append((row[:, :-1].contiguous().to(dev), row[:, 1:].contiguous().to(dev)))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, first_loss, last_loss = [], None, None
    for step in range(args.warmup + args.steps):
        tokens, targets = batches[step % len(batches)]
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(tokens)
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t1 = time.perf_counter()
        if step >= args.warmup:
            times.append((t1 - t0) * 1e3)
        value = loss.item()
        first_loss = value if first_loss is None else first_loss
        last_loss = value

    if args.profile > 0:
        # Where the time goes, kernel by kernel (for the training-speed work): self CUDA time, summed.
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for step in range(args.profile):
                tokens, targets = batches[step % len(batches)]
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = forward(tokens)
                    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            sync()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70),
              file=sys.stderr)

    median = sorted(times)[len(times) // 2]  # as the C++ bench
    tokens_per_step = args.batch_size * args.seq_len
    matmul, fpt = train_flops_per_token(model, args.dim, args.n_layers, args.n_heads, n_kv, args.vocab_size,
                                        args.seq_len)
    result = {
        "impl": f"pytorch-{args.mode}",
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "precision": "bf16-autocast" if bf16 else "fp32",
        "dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
        "vocab_size": args.vocab_size, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "parameters": sum(p.numel() for p in model.parameters()),
        "matmul_params": matmul,
        "train_flops_per_token": fpt,
        "step_ms_median": median, "step_ms_min": min(times), "step_ms_max": max(times),
        "tokens_per_s": tokens_per_step / (median / 1e3),
        "tflops": fpt * tokens_per_step / (median / 1e3) / 1e12,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else 0.0,
        "timed_steps": args.steps, "warmup_steps": args.warmup,
        "first_loss": first_loss, "last_loss": last_loss,
        "torch_version": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
