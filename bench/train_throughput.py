"""What the readable training loop costs: `train()` per step against a bare forward/backward/AdamW step of the
same model on the same rows, in the same process.

Both run the same optimizer steps on the same global batches (16 chats of ~70 tokens, the TINY model, token-mean,
one micro-batch): the bare step is `model(...)`, `(w * losses).sum().backward()`, `AdamW.step()` on batches laid
out, weighted and stored beforehand; `train()` additionally cuts each batch out of the dataset, computes its
weights with `reductions`, and logs the tidy history. The two alternate in rounds and each keeps its best round.

Prints a table, then as its LAST line JSON: {"tokens_per_s", "bare_tokens_per_s", "overhead_vs_model"}
(overhead_vs_model = time of train() per step / time of the bare step; goal <= 1.15). On a machine shared with
other jobs set LOSSREDUCE_THREADS=1 and read the ratio, not the rates.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lossreduce_demo import synth
from lossreduce_demo.config import set_torch_threads
from lossreduce_demo.layouts import token_losses
from lossreduce_demo.model import GPT
from lossreduce_demo.reductions import token_weights
from lossreduce_demo.train import TrainConfig, TrainingData, train


def bare_steps(cfg: TrainConfig, prepared) -> float:
    """Seconds of the bare loop: forward, weighted loss, backward, AdamW on prepared (batch, weights) pairs."""
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0)
    start = time.perf_counter()
    for batch, weights in prepared:
        (weights * token_losses(model, batch)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def train_steps(chats, cfg: TrainConfig, data: TrainingData) -> float:
    start = time.perf_counter()
    train(chats, ["token-mean"], cfg, data=data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    threads = set_torch_threads()
    chats = synth.make_chats(512, seed=0)
    cfg = TrainConfig(steps=args.steps, micro_batch_size=args.batch, eval_every=10**9, progress=False)
    data = TrainingData(chats, cfg.layout, cfg.global_batch, cfg.seed, cfg.model.context_len + 1)
    batches = [data.global_batch_at(s) for s in range(cfg.steps)]
    prepared = [(b, token_weights(b, "token-mean").float()) for b in batches]
    tokens = sum(int((b.segment_id >= 0).sum()) for b in batches)
    bare_steps(cfg, prepared[:3]), train_steps(chats, TrainConfig(steps=3, progress=False), data)  # warm-up
    best_train = best_bare = float("inf")
    for _ in range(args.rounds):
        best_train = min(best_train, train_steps(chats, cfg, data))
        best_bare = min(best_bare, bare_steps(cfg, prepared))
    print(f"torch threads {threads}; {cfg.steps} steps of {cfg.global_batch} chats ({tokens} tokens), "
          f"best of {args.rounds} rounds")
    print(f"train():    {best_train:6.2f} s  {tokens / best_train:8.0f} tokens/s")
    print(f"bare step:  {best_bare:6.2f} s  {tokens / best_bare:8.0f} tokens/s")
    print(json.dumps({"tokens_per_s": round(tokens / best_train), "bare_tokens_per_s": round(tokens / best_bare),
                      "overhead_vs_model": round(best_train / best_bare, 3)}))


if __name__ == "__main__":
    main()
