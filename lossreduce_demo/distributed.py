"""Real data parallel, the harness: the DDP step of `lossreduce_demo.ddp` in R processes, compared with one process.

The step itself (`ddp.ddp_backward`: the all-reduced counts, ×R against DDP's mean) is in `lossreduce_demo.ddp`;
this module builds the skewed global batches, starts the processes, compares gradients and weights with a single
process on the whole batch, and returns tidy DataFrames.

Two ways to start it, one code path (`run_rank`):
- from Python / a notebook: `dp_gradient_errors(...)`, `dp_training(...)` spawn R processes on this machine
  (torch.multiprocessing, spawn), wait with a timeout, and return tidy DataFrames. They open no TCP store (a
  FileStore in a private temporary folder) and gloo listens on the loopback interface only;
- under torchrun, on one machine or many:
  `torchrun --nproc_per_node=2 -m lossreduce_demo.distributed --scheme token-mean --normalization global`
  (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT come from the environment).

gloo on CPU (fp64 works), nccl when CUDA is there (one GPU per rank).
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .ddp import ddp_backward, wrap_ddp
from .errors import OptionError, UserError
from .layouts import LAYOUTS, Batch, make_layout, token_losses
from .model import GPT, GPTConfig
from .reductions import NORMALIZATIONS, SCHEMES, Plan, Scheme, effective_weights, token_weights
from .synth import LengthSpec, make_chats

DATASETS = ("skewed", "equal")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MODEL_CONFIG = GPTConfig()  # the suite's TINY GPT: 2 layers, d=64, 4 heads, context 128


# ---------------------------------------------------------------- data


def shard_lengths(data: str, rank: int, ranks: int) -> tuple[LengthSpec, tuple[int, int]]:
    """Reply-length distribution and turn range of rank `rank`'s shard.

    skewed: bimodal 4 / 32 characters, long with probability 0.1 on rank 0 rising to 0.9 on the last rank;
    equal: every reply 8 characters, always 2 turns (all micro-batches have the same counts: negative control)."""
    if data == "skewed":
        long_fraction = 0.5 if ranks == 1 else 0.1 + 0.8 * rank / (ranks - 1)
        return LengthSpec("bimodal", short_mean=4, long_mean=32, long_fraction=long_fraction), (1, 3)
    if data == "equal":
        return LengthSpec("fixed", mean=8), (2, 2)
    raise ValueError(f"unknown data {data!r}; choose one of {', '.join(DATASETS)}")


def global_batch(data: str, ranks: int, rows_per_rank: int, seed: int = 0, step: int = 0,
                 layout: str = "multiturn") -> Batch:
    """The global batch of one optimizer step: rank r's conversations come r-th, so the contiguous shards of
    `reductions.Plan.deal` give rank 0 the short ones and the last rank the long ones. Deterministic in
    (data, ranks, rows_per_rank, seed, step)."""
    chats = []
    for r in range(ranks):
        lengths, turns = shard_lengths(data, r, ranks)
        chats += make_chats(rows_per_rank, lengths=lengths, turns=turns, max_tokens=MODEL_CONFIG.context_len,
                            seed=1_000_003 * seed + 1009 * step + r)
    return make_layout(chats, layout, max_len=MODEL_CONFIG.context_len, row_len=MODEL_CONFIG.context_len)


# ---------------------------------------------------------------- one rank's work


COMPARED = ("global", "local")  # the fix and the bug; "rank" runs too when asked for
Config = tuple  # (data, scheme, micro_batches K, normalization)


def product_configs(data=("skewed",), schemes=SCHEMES, micro_batches=(1,), normalizations=COMPARED) -> tuple:
    """Every combination, as `DPTask.configs`; each argument may be one value or a sequence."""
    return tuple((d, s, int(k), n) for d in _seq(data) for s in _seq(schemes) for k in _seq(micro_batches)
                 for n in _seq(normalizations))


def _seq(x) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple, range)) else (x,)


@dataclass
class DPTask:
    """What every rank runs. `mode`: "gradients" (one DDP step per config, compared with one process) or
    "training" (`steps` AdamW steps per config, weights compared with single-process training)."""

    configs: tuple[Config, ...] = product_configs()
    mode: str = "gradients"
    seeds: tuple[int, ...] = (0,)
    alpha: float = 0.5
    rows_per_rank: int = 8
    layout: str = "multiturn"
    dtype: str = "float64"
    steps: int = 1
    lr: float = 3e-3
    backend: str | None = None
    verbose: bool = False  # ranks print their `rank r: world_size=R backend=B` line
    timeout_s: float = 120.0

    def check(self, ranks: int, local_ranks: int | None = None) -> DPTask:
        """Validated copy with the backend resolved; `local_ranks`: ranks on this machine (default all).
        Problems raise `OptionError` (one line, the CLI prints it)."""
        if self.mode not in ("gradients", "training"):
            raise OptionError(f"mode={self.mode!r}: choose gradients or training")
        if not self.configs:
            raise OptionError("no configurations to run")
        if ranks < 1 or self.rows_per_rank < 1 or self.steps < 1:
            raise OptionError(f"ranks={ranks}, rows_per_rank={self.rows_per_rank}, steps={self.steps}: all >= 1")
        for data, scheme, k, norm in self.configs:
            shard_lengths(data, 0, 1)
            Scheme(scheme, alpha=self.alpha)
            if norm not in NORMALIZATIONS:
                raise OptionError(f"unknown normalization {norm!r}; choose one of {', '.join(NORMALIZATIONS)}")
            if not 1 <= k <= self.rows_per_rank:
                raise OptionError(f"micro_batches={k}: need 1 <= K <= rows_per_rank={self.rows_per_rank} "
                                 "(every rank must run the same number of backward passes)")
        if self.layout not in LAYOUTS:
            raise OptionError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.dtype not in DTYPES:
            raise OptionError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        backend = self.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in ("gloo", "nccl"):
            raise OptionError(f"backend={backend!r}: choose gloo or nccl")
        if backend == "nccl" and torch.cuda.device_count() < (local_ranks or ranks):
            raise OptionError(f"nccl needs one GPU per rank: {local_ranks or ranks} ranks on this machine, "
                             f"{torch.cuda.device_count()} GPUs (use backend gloo)")
        return replace(self, backend=backend, configs=tuple(tuple(c) for c in self.configs))


class SingleProcess:
    """The single-process reference: one plain model, the whole batch, one forward; the gradient of
    sum(w * l) for any weight map w (gradients are linear in w, so the graph is reused)."""

    def __init__(self, seed: int, dtype: torch.dtype, device, batch: Batch):
        self.model = new_model(seed, dtype, device)
        self.params = list(self.model.parameters())
        self.losses = token_losses(self.model, batch.to(device))  # (B, T), graph kept

    def grad(self, weights: torch.Tensor) -> torch.Tensor:
        objective = (weights.to(self.losses.device, self.losses.dtype) * self.losses).sum()
        grads = torch.autograd.grad(objective, self.params, retain_graph=True)
        return torch.cat([g.reshape(-1) for g in grads]).double()


def weighted_backward(model, batch: Batch, weights: torch.Tensor) -> None:
    """One process, whole batch: backward on sum(weights * per-token loss)."""
    (weights.to(batch.tokens.device, next(model.parameters()).dtype) * token_losses(model, batch)).sum().backward()


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()


def max_rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| over all parameters (0 when both are 0)."""
    scale = float(ref.abs().max())
    diff = float((a - ref).abs().max())
    return diff / scale if scale > 0 else diff


def new_model(seed: int, dtype: torch.dtype, device) -> GPT:
    torch.manual_seed(seed)
    return GPT(MODEL_CONFIG).to(device=device, dtype=dtype).train()


def _owner(configs, ranks: int) -> dict:
    """(data, scheme) -> the rank that does its single-process comparison (round robin: the ranks share it)."""
    keys = list(dict.fromkeys((c[0], c[1]) for c in configs))
    return {key: i % ranks for i, key in enumerate(keys)}


def _gradient_rows(task: DPTask, device) -> list[dict]:
    """Mode "gradients": per config one DDP step vs one process. After a DDP step every rank holds the same
    averaged gradient, so one rank per (data, scheme) compares it with the single-process gradients."""
    rank, ranks = dist.get_rank(), dist.get_world_size()
    dtype, owner = DTYPES[task.dtype], _owner(task.configs, ranks)
    rows = []
    for seed in task.seeds:
        ddp = wrap_ddp(new_model(seed, dtype, device))
        batches, singles, full_grads = {}, {}, {}
        for data, name, k, norm in task.configs:
            scheme = Scheme(name, alpha=task.alpha)
            if data not in batches:
                batches[data] = global_batch(data, ranks, task.rows_per_rank, seed, layout=task.layout)
            batch = batches[data]
            ddp.zero_grad(set_to_none=True)
            ddp_backward(ddp, batch, scheme, Plan(ranks, k, norm), device)
            if owner[data, name] != rank:
                continue
            if data not in singles:
                singles[data] = SingleProcess(seed, dtype, device, batch)
            if (data, name) not in full_grads:
                full_grads[data, name] = singles[data].grad(token_weights(batch, scheme))
            full, grad = full_grads[data, name], flat_grad(ddp.module)
            diff = max_rel_diff(grad, full)
            if norm == "global":  # the core's prediction is the full-batch gradient itself
                vs_core = diff
            else:
                w, _, _ = effective_weights(batch, scheme, Plan(ranks, k, norm))
                vs_core = max_rel_diff(grad, singles[data].grad(w))
            common = dict(seed=seed, data=data, scheme=name, normalization=norm, ranks=ranks, micro_batches=k,
                          rows_per_rank=task.rows_per_rank, dtype=task.dtype)
            rows += [dict(common, metric="max_rel_grad_diff", value=diff),
                     dict(common, metric="rel_grad_norm_diff", value=float((grad - full).norm() / full.norm())),
                     dict(common, metric="max_rel_diff_vs_core", value=vs_core)]
    return rows


def _training_rows(task: DPTask, device) -> list[dict]:
    """Mode "training": `steps` AdamW steps in R processes vs the same steps in one process, per config.
    Config i's single-process twin runs on rank i mod R (DDP keeps every rank's weights identical)."""
    rank, ranks = dist.get_rank(), dist.get_world_size()
    dtype = DTYPES[task.dtype]
    rows = []
    for seed in task.seeds:
        batches = {}
        for index, (data, name, k, norm) in enumerate(task.configs):
            if data not in batches:
                batches[data] = [global_batch(data, ranks, task.rows_per_rank, seed, step=s, layout=task.layout)
                                 for s in range(task.steps)]
            scheme, mine = Scheme(name, alpha=task.alpha), index % ranks == rank
            ddp = wrap_ddp(new_model(seed, dtype, device))
            opt = torch.optim.AdamW(ddp.parameters(), lr=task.lr)
            if mine:
                single = new_model(seed, dtype, device)
                single_opt = torch.optim.AdamW(single.parameters(), lr=task.lr)
            common = dict(seed=seed, data=data, scheme=name, normalization=norm, ranks=ranks, micro_batches=k,
                          rows_per_rank=task.rows_per_rank, dtype=task.dtype)
            for step, batch in enumerate(batches[data]):
                opt.zero_grad(set_to_none=True)
                ddp_backward(ddp, batch, scheme, Plan(ranks, k, norm), device)
                if mine:
                    single_opt.zero_grad(set_to_none=True)
                    weighted_backward(single, batch.to(device), token_weights(batch, scheme))
                    if step == 0:
                        rows.append(dict(common, step=0, metric="max_rel_grad_diff",
                                         value=max_rel_diff(flat_grad(ddp.module), flat_grad(single))))
                    single_opt.step()
                opt.step()
                if mine:
                    ref = flat_params(single)
                    distance = float((flat_params(ddp.module) - ref).norm() / ref.norm())
                    rows.append(dict(common, step=step + 1, metric="rel_weight_distance", value=distance))
    return rows


def _set_threads(local_world: int) -> None:
    """LOSSREDUCE_THREADS if set, else share the cores among the ranks on this machine."""
    raw = os.environ.get("LOSSREDUCE_THREADS", "").strip()
    torch.set_num_threads(int(raw) if raw else max(1, (os.cpu_count() or 1) // max(local_world, 1)))


def _gather_rows(rows: list[dict], device) -> list[dict]:
    """Every rank's rows on rank 0 ([] elsewhere), sent as JSON bytes: unlike `gather_object`, nothing a peer
    sends is unpickled, so a peer can send data but never code."""
    payload = torch.frombuffer(bytearray(json.dumps(rows).encode()), dtype=torch.uint8).to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([payload.numel()], device=device))
    longest = max(int(n) for n in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:payload.numel()] = payload
    parts = [torch.empty_like(padded) for _ in sizes] if dist.get_rank() == 0 else None
    dist.gather(padded, parts, dst=0)
    if dist.get_rank() != 0:
        return []
    return [row for part, n in zip(parts, sizes) for row in json.loads(bytes(part[:int(n)].tolist()))]


def run_rank(task: DPTask, init_method: str | None = None) -> dict:
    """Run `task` in this process, one rank of an already configured environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT, LOCAL_RANK, as torchrun sets them; or `init_method`, e.g. a file:// store, with
    RANK and WORLD_SIZE). Returns {"line", "rows"}: rows of all ranks gathered on rank 0, [] elsewhere. The
    process group is always destroyed, also on error."""
    world, local_world = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    task = task.check(world, local_world)
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    _set_threads(local_world)
    if task.backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    where = dict(init_method=init_method, rank=int(os.environ["RANK"]), world_size=world) if init_method else {}
    dist.init_process_group(task.backend, timeout=timedelta(seconds=task.timeout_s), **where)
    try:
        rank = dist.get_rank()
        line = f"rank {rank}: world_size={dist.get_world_size()} backend={dist.get_backend()}"
        if task.verbose:  # one rank at a time, in rank order: lines from several processes must not interleave
            for turn in range(dist.get_world_size()):
                if turn == rank:
                    print(line, flush=True)
                dist.barrier()
        rows = _gather_rows((_gradient_rows if task.mode == "gradients" else _training_rows)(task, device), device)
        gc.collect()  # free the DDP reducers while their process group is still alive
        dist.barrier()  # leave together: no rank tears down while another is still talking
        return {"line": line, "rows": rows}
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- spawning R processes from Python


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _loopback_interface() -> str | None:
    """The loopback interface's name ("lo" on Linux, "lo0" on macOS) for GLOO_SOCKET_IFNAME, if there is one."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in names if n == "lo" or (n.startswith("lo") and n[2:].isdigit())), None)


def _spawned_rank(rank: int, world: int, task: DPTask, out_dir: str) -> None:
    """One local rank. No TCP store: the ranks meet in a FileStore inside `out_dir` (a private temporary folder),
    and gloo's own sockets listen on the loopback interface only. Ctrl-C reaches the whole process group: the
    ranks ignore it and the parent stops them (one line, no traceback from every rank)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent while it started us
    faulthandler.enable()  # a rank killed by a signal (e.g. an abort in C++) still shows its Python stack
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    loopback = _loopback_interface()
    if loopback:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback
    result = run_rank(task, init_method=Path(out_dir, "store").as_uri())
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def spawn(fn, ranks: int, args=(), timeout_s: float = 120.0) -> None:
    """Run fn(rank, *args) in `ranks` fresh processes (torch.multiprocessing, spawn) and wait for all of them.

    A rank that raises stops the others and raises RuntimeError here; past `timeout_s` every rank is killed and
    TimeoutError is raised; Ctrl-C (KeyboardInterrupt) or SIGTERM (as the CLI raises it) kill every rank too.
    Either way no process is left behind: SIGINT and SIGTERM wait while the processes start."""
    import torch.multiprocessing as mp

    masked = hasattr(signal, "pthread_sigmask")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if masked else None
    ctx = None
    try:
        ctx = mp.start_processes(fn, args=args, nprocs=ranks, join=False, start_method="spawn")
        if masked:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a signal that came meanwhile arrives here
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ranks} ranks did not finish within {timeout_s:g} s; all were stopped")
    except mp.ProcessRaisedException as err:
        raise RuntimeError(f"a rank failed:\n{err}") from None
    except mp.ProcessExitedException as err:
        raise RuntimeError(f"a rank died: {err}") from None
    finally:
        if masked:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
        for p in ctx.processes if ctx else ():
            if p.is_alive():
                p.kill()
            p.join(timeout=10)


def run_spawned(task: DPTask, ranks: int = 2) -> tuple[list[dict], list[str]]:
    """Run `task` on `ranks` local processes; returns (rank 0's rows, every rank's line). Their meeting point and
    results live in a private temporary folder (lossreduce-dp-*), removed afterwards whatever happens."""
    task = task.check(ranks)
    with tempfile.TemporaryDirectory(prefix="lossreduce-dp-") as out_dir:
        spawn(_spawned_rank, ranks, args=(ranks, task, out_dir), timeout_s=task.timeout_s + 30)
        results = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(ranks)]
    return results[0]["rows"], [r["line"] for r in results]


def _frame(rows: list[dict], lines: list[str], wall_s: float):
    import pandas as pd

    frame = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(SCHEMES)}
    keys = [c for c in ("seed", "data", "scheme", "micro_batches", "normalization", "step") if c in frame]
    frame = frame.sort_values(keys, key=lambda col: col.map(order) if col.name == "scheme" else col,
                              kind="stable", ignore_index=True)
    frame.attrs.update(rank_lines=lines, wall_s=wall_s)
    return frame


def dp_gradient_errors(schemes=SCHEMES, ranks: int = 2, normalizations=COMPARED, *, micro_batches=1,
                       data="skewed", seeds=(0,), alpha: float = 0.5, rows_per_rank: int = 8,
                       layout: str = "multiturn", dtype: str = "float64", backend: str | None = None,
                       verbose: bool = False, timeout_s: float = 120.0):
    """One DDP gradient step in `ranks` real processes for every (data, scheme, K, normalization), all in ONE
    spawn, each compared with the single-process full-batch gradient (same init).

    data: "skewed" (rank 0 mostly short replies, the last rank mostly long) or "equal" (every micro-batch has
    the same counts). Returns a tidy DataFrame (seed, data, scheme, normalization, ranks, micro_batches,
    rows_per_rank, dtype, metric, value) with metrics
      max_rel_grad_diff     max|g_DDP - g_single| / max|g_single|  (global: rounding only; local: the bug)
      rel_grad_norm_diff    ||g_DDP - g_single|| / ||g_single||
      max_rel_diff_vs_core  max_rel against the gradient of the core's `effective_weights` map (≈0 for both)
    `frame.attrs` holds rank_lines ("rank r: world_size=R backend=B") and wall_s.

    Works in notebooks as is; in a script, call it under `if __name__ == "__main__":` (spawned processes
    re-import the main module)."""
    task = DPTask(product_configs(data, schemes, micro_batches, normalizations), mode="gradients",
                  seeds=_seq(seeds), alpha=alpha, rows_per_rank=rows_per_rank, layout=layout, dtype=dtype,
                  backend=backend, verbose=verbose, timeout_s=timeout_s)
    start = time.perf_counter()
    rows, lines = run_spawned(task, ranks)
    return _frame(rows, lines, time.perf_counter() - start)


def dp_training(schemes=SCHEMES, ranks: int = 2, normalizations=COMPARED, *, steps: int = 8, seeds=(0,),
                data="skewed", micro_batches=1, lr: float = 3e-3, alpha: float = 0.5, rows_per_rank: int = 8,
                dtype: str = "float32", backend: str | None = None, timeout_s: float = 300.0):
    """`steps` AdamW steps with DDP in `ranks` processes vs the same steps in one process (fresh batch each
    step), per (data, scheme, K, normalization), all in ONE spawn. Tidy DataFrame with metrics
    rel_weight_distance (||θ_DDP − θ_single|| / ||θ_single|| after steps 1..steps) and max_rel_grad_diff
    (step 0)."""
    task = DPTask(product_configs(data, schemes, micro_batches, normalizations), mode="training",
                  seeds=_seq(seeds), alpha=alpha, rows_per_rank=rows_per_rank, dtype=dtype, steps=steps, lr=lr,
                  backend=backend, timeout_s=timeout_s)
    start = time.perf_counter()
    rows, lines = run_spawned(task, ranks)
    return _frame(rows, lines, time.perf_counter() - start)


# ---------------------------------------------------------------- command line


def result_line(value: float) -> str:
    return f"max relative gradient difference vs single process: {value:.1e}"


def dp_check_main(args) -> int:
    """`python -m lossreduce_demo dp-check`: one step in R processes vs one process; prints the result last."""
    frame = dp_gradient_errors(args.scheme, ranks=args.ranks, normalizations=args.normalization,
                               micro_batches=getattr(args, "micro_batches", 1), alpha=args.alpha,
                               backend=args.backend, verbose=True)
    value = float(frame.loc[frame.metric == "max_rel_grad_diff", "value"].max())
    print(f"scheme={args.scheme} normalization={args.normalization} ranks={args.ranks} data=skewed "
          f"({frame.attrs['wall_s']:.1f} s)")
    print(result_line(value), flush=True)
    return 0


def _torchrun_main(argv=None) -> int:
    """Entry point under torchrun (any number of nodes): every rank runs this; rank 0 prints the result."""
    p = argparse.ArgumentParser(prog="torchrun ... -m lossreduce_demo.distributed", description=__doc__.splitlines()[0])
    p.add_argument("--scheme", default="token-mean", choices=SCHEMES)
    p.add_argument("--normalization", default="global", choices=NORMALIZATIONS)
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--rows-per-rank", type=int, default=8)
    p.add_argument("--data", default="skewed", choices=DATASETS)
    p.add_argument("--backend", default=None, help="gloo or nccl (default: nccl if CUDA is available)")
    args = p.parse_args(argv)
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            p.error(f"{var} is not set: start this module with torchrun (or use `python -m lossreduce_demo "
                    "dp-check`, which starts the processes itself)")
    task = DPTask(product_configs(args.data, args.scheme, args.micro_batches, args.normalization),
                  alpha=args.alpha, rows_per_rank=args.rows_per_rank, backend=args.backend, verbose=True)
    try:
        result = run_rank(task)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except dist.DistNetworkError as err:
        if "EADDRINUSE" not in str(err):
            raise
        print(f"error: MASTER_PORT={os.environ['MASTER_PORT']} on {os.environ['MASTER_ADDR']} is already in use "
              "(another job?); choose a free port (torchrun --master_port=PORT, or torchrun --standalone)",
              file=sys.stderr)
        return 2
    if int(os.environ["RANK"]) == 0:
        value = max(r["value"] for r in result["rows"] if r["metric"] == "max_rel_grad_diff")
        print(result_line(value), flush=True)
    return 0


__all__ = ["DPTask", "dp_gradient_errors", "dp_training", "dp_check_main", "global_batch", "run_rank",
           "run_spawned", "spawn", "product_configs", "max_rel_diff", "result_line"]

if __name__ == "__main__":
    sys.exit(_torchrun_main())
