"""Tokens/s of `lossreduce_demo.model.GPT` against karpathy/nanoGPT's model.py, same config, same process.

Config: 2 layers, d=64, 4 heads, vocab 264, batch 16 × 128 tokens, AdamW, one thread unless LOSSREDUCE_THREADS says
otherwise. One training step = forward, loss, backward, AdamW step; ours reduces its per-token losses with a
token-mean (`(w * l).sum()`), nanoGPT takes F.cross_entropy's mean. The two models alternate in rounds and each
keeps its best round, so a machine shared with other jobs distorts the ratio less.

Prints a table, then as its LAST line JSON: {"ours_tokens_per_s", "nanogpt_tokens_per_s", "ratio"} (goal: ratio
>= 0.95).

`NanoGPT` below is a baseline, not project code: nanoGPT's model.py (github.com/karpathy/nanoGPT) written out with
the parts a 2-layer CPU run uses (flash attention via scaled_dot_product_attention, GELU MLP, pre-norm blocks,
tied lm_head, GPT-2 init).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from lossreduce_demo.config import set_torch_threads
from lossreduce_demo.model import GPT, GPTConfig


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.attn_dropout, self.resid_dropout = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.d_model, cfg.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(cfg.d_model, cfg.bias), CausalSelfAttention(cfg)
        self.ln_2, self.mlp = LayerNorm(cfg.d_model, cfg.bias), MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.d_model), wpe=nn.Embedding(cfg.context_len, cfg.d_model),
            drop=nn.Dropout(cfg.dropout), h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.d_model, cfg.bias)))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


def steps_per_s(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    threads = set_torch_threads()
    cfg = GPTConfig(n_layer=2, d_model=64, n_head=4, context_len=128)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (args.batch, cfg.context_len), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (args.batch, cfg.context_len), generator=g)
    weights = torch.full(targets.shape, 1 / targets.numel())  # token-mean as a weight map

    torch.manual_seed(0)
    ours, theirs = GPT(cfg), NanoGPT(cfg)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-3)

    def step_ours():
        _, losses = ours(idx, targets)
        (weights * losses).sum().backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_theirs():
        _, loss = theirs(idx, targets)
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    for step in (step_ours, step_theirs):  # warm-up
        steps_per_s(step, 3)
    best = {"ours": 0.0, "nanogpt": 0.0}
    for _ in range(args.rounds):
        best["ours"] = max(best["ours"], steps_per_s(step_ours, args.steps))
        best["nanogpt"] = max(best["nanogpt"], steps_per_s(step_theirs, args.steps))
    tokens = args.batch * cfg.context_len
    print(f"torch threads {threads}; batch {args.batch} x {cfg.context_len} tokens, best of {args.rounds} rounds")
    for name, rate in best.items():
        print(f"{name:8s} {rate * tokens:10.0f} tokens/s")
    print(json.dumps({"ours_tokens_per_s": round(best["ours"] * tokens), "nanogpt_tokens_per_s":
                      round(best["nanogpt"] * tokens), "ratio": round(best["ours"] / best["nanogpt"], 3)}))


if __name__ == "__main__":
    main()
