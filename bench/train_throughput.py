"""Training throughput of the tiny GPT, and the speed-up of training S schemes together (one grouped model)
against one after another, in the same process on the same data.

Prints a table, then as its LAST line JSON: {"schemes": S, "multi_scheme_speedup": x, "tokens_per_s": y,
"cpu_speedup": z} (tokens_per_s: non-padding tokens per second of one scheme trained alone; speed-ups: time of the S
schemes one after another / together, by the wall clock and by this process's CPU time, which a machine shared with
other jobs distorts less). Read the numbers as ratios.

Where the time goes (1 thread, torch.profiler): at the default sizes (16 chats of ~70 tokens, TINY model) one
scheme's step is already arithmetic-bound on a CPU (batched matmuls, attention, GELU ≈ 85 % of it; Python and
dispatch ≈ 15 %), and the arithmetic grows with S, so grouping saves only that fixed part: expect a CPU speed-up
≈ S / (0.15 + 0.85 S) (1.2 at S = 4), a little more with 2 threads (the grouped matmuls are big enough to share).
The overhead-bound case the grouped model is built for is a GPU, where a step of this size is launch-bound.
On a machine shared with other jobs set LOSSREDUCE_THREADS=1: two threads that wait on each other there make
every number several times slower and the ratio meaningless.
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


def timed(chats, runs, cfg, data=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one training."""
    wall, cpu = time.perf_counter(), time.process_time()
    train(chats, runs, cfg, data=data)
    return time.perf_counter() - wall, time.process_time() - cpu


def best(timings) -> tuple[float, float]:
    timings = list(timings)
    return min(t[0] for t in timings), min(t[1] for t in timings)


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
    one = best(timed(chats, runs[:1], cfg, data) for _ in range(args.repeats))  # the layout is shared: model time
    sequential = best(tuple(map(sum, zip(*(timed(chats, [r], cfg, data) for r in runs))))
                      for _ in range(args.repeats))
    together = best(timed(chats, runs, cfg, data) for _ in range(args.repeats))
    print(f"torch threads {threads}; {cfg.steps} steps of {cfg.global_batch} chats ({tokens} tokens)")
    print("                               wall       CPU")
    print(f"one scheme:                 {one[0]:7.2f} s {one[1]:7.2f} s  {tokens / one[0]:9.0f} tokens/s")
    print(f"{len(runs)} schemes one after another: {sequential[0]:7.2f} s {sequential[1]:7.2f} s")
    print(f"{len(runs)} schemes together:          {together[0]:7.2f} s {together[1]:7.2f} s  "
          f"({together[0] / one[0]:.2f}x / {together[1] / one[1]:.2f}x one scheme; target <= 1.5x)")
    print(json.dumps({"schemes": len(runs), "multi_scheme_speedup": round(sequential[0] / together[0], 3),
                      "tokens_per_s": round(tokens / one[0], 1),
                      "cpu_speedup": round(sequential[1] / together[1], 3)}))


if __name__ == "__main__":
    main()
