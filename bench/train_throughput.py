"""Training throughput of the tiny GPT, and the speed-up of training S schemes together (one grouped model)
against one after another, in the same process on the same data.

Prints a table, then as its LAST line JSON: {"schemes": S, "multi_scheme_speedup": x, "tokens_per_s": y}
(tokens_per_s: non-padding tokens per second of one scheme trained alone). Read the numbers as ratios.
"""

from __future__ import annotations

import argparse
import json
import time

from lossreduce_demo import synth
from lossreduce_demo.model import set_torch_threads
from lossreduce_demo.train import TrainConfig, TrainingData, train

SCHEMES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum", "turn-mean", "length-power",
           "seq-mean-token-sum-norm", "token-mean")


def timed(chats, runs, cfg, data=None) -> float:
    start = time.perf_counter()
    train(chats, runs, cfg, data=data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    args = parser.parse_args()
    threads = set_torch_threads()
    chats = synth.make_chats(512, seed=0)
    cfg = TrainConfig(steps=args.steps, micro_batch_size=args.batch, eval_every=10**9, progress=False)
    data = TrainingData(chats, cfg.layout, cfg.global_batch, cfg.seed, cfg.model.context_len + 1)
    tokens = sum(int((data.global_batch_at(s).segment_id >= 0).sum()) for s in range(cfg.steps))
    runs = list(SCHEMES[: args.schemes])
    timed(chats, runs[:1], TrainConfig(steps=3, progress=False))  # warm-up
    one = min(timed(chats, runs[:1], cfg, data) for _ in range(args.repeats))  # the layout is shared: model time
    sequential = min(sum(timed(chats, [r], cfg, data) for r in runs) for _ in range(args.repeats))
    together = min(timed(chats, runs, cfg, data) for _ in range(args.repeats))
    print(f"torch threads {threads}; {cfg.steps} steps of {cfg.global_batch} chats ({tokens} tokens)")
    print(f"one scheme:                 {one:7.2f} s  {tokens / one:9.0f} tokens/s")
    print(f"{len(runs)} schemes one after another: {sequential:7.2f} s")
    print(f"{len(runs)} schemes together:          {together:7.2f} s  ({together / one:.2f}x one scheme)")
    print(json.dumps({"schemes": len(runs), "multi_scheme_speedup": round(sequential / together, 3),
                      "tokens_per_s": round(tokens / one, 1)}))


if __name__ == "__main__":
    main()
