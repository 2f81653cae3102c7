"""Command line: `python -m lossreduce_demo {weights,make-data,experiment,dp-check} ...`.

User errors (bad files, bad options, a bad destination: `errors.UserError`) print one line `error: ...` and exit
with status 2; anything else is a bug and shows its traceback. Warnings about the input (`errors.InputWarning`)
print one line `warning: ...` each. Ctrl-C exits with 130 and SIGTERM with 143, after the running command has
cleaned up (child processes stopped, temporary files removed, no partial output).

Adding a command or an option: give every numeric option a `bounded(...)` type (or an `_option` one), check each
output with `outputs.check_output_file` / `check_output_dir` *before* the work, and write it with
`outputs.replacing` (see `cmd_weights`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import warnings

from .errors import InputWarning, OptionError, UserError, shown

# Bounds of the options (README, "Errors, warnings and bounds").
MAX_RANKS = 1024  # weights --ranks (simulated)
MAX_MICRO_BATCHES = 1024  # weights --micro-batches
MAX_ROW_LEN = 1 << 20  # weights --row-len: one conversation is at most chats.MAX_LINE_BYTES long anyway
MAX_SEEDS = 100  # experiment --seeds
MAX_DP_RANKS = 16  # dp-check --ranks: real processes, ~300 MB each


def _option(parse, kind: str, ok, requirement: str):
    """An argparse type: parse with `parse`, then require `ok(value)`; errors say what was expected.

    The one helper for validated option values (argparse names the option: `argument --x: must be ...`)."""

    def convert(text: str):
        try:
            value = parse(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {kind}, got {shown(text)}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text if len(text) <= 40 else shown(text)}")
        return value

    return convert


def bounded(low, high=None, kind: str = "int"):
    """A whole number (kind="int") or a finite number ("float") in [low, high] (high None: no upper bound)."""
    parse, noun = (int, "a whole number") if kind == "int" else (float, "a number")
    requirement = f">= {low}" if high is None else f"between {low} and {high}"
    return _option(parse, noun, lambda v: (kind == "int" or math.isfinite(v)) and low <= v
                   and (high is None or v <= high), requirement)


_finite_float = _option(float, "a number", math.isfinite, "finite")


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    from .frameworks import FRAMEWORKS
    from .layouts import LAYOUTS
    from .reductions import NORMALIZATIONS, SCHEMES

    parser = argparse.ArgumentParser(prog="python -m lossreduce_demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("weights", help="per-token weights of a chat JSONL under a reduction scheme")
    w.add_argument("file", help="chat JSONL: one {'messages': [...]} per line")
    w.add_argument("--scheme", default=None, choices=SCHEMES, help="default: token-mean")
    w.add_argument("--alpha", type=_finite_float, default=0.5, help="exponent of length-power (any finite number)")
    w.add_argument("--delta-l-alpha", type=_finite_float, default=1.0,
                   help="α of delta-l (ΔL Normalization: sample weight ∝ n_i^-α; 1 = minimum variance)")
    w.add_argument("--format", default="multiturn", choices=LAYOUTS, dest="layout")
    w.add_argument("--ranks", type=bounded(1, MAX_RANKS), default=1, help="data-parallel ranks R")
    w.add_argument("--micro-batches", type=bounded(1, MAX_MICRO_BATCHES), default=1,
                   help="gradient-accumulation steps K")
    w.add_argument("--normalization", default=None, choices=NORMALIZATIONS, help="default: global")
    w.add_argument("--l-max", type=bounded(1, kind="float"), default=None,
                   help="constant L_max (tokens, >= 1) of seq-mean-token-sum-norm (default: the longest sample)")
    w.add_argument("--row-len", type=bounded(1, MAX_ROW_LEN), default=None,
                   help="packed row length (default: the longest conversation)")
    w.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="a local Hugging Face tokenizer directory with a chat template (default: the byte template)")
    w.add_argument("--skip-no-assistant", action="store_true", help="skip conversations without an assistant turn")
    w.add_argument("--out", default=None, help="write one row per token to this CSV")
    w.add_argument("--framework", default=None, choices=FRAMEWORKS,
                   help="weights as this library applies them (replaces --scheme, --normalization, --l-max)")
    w.add_argument("--option", action="append", default=[], type=_key_value, metavar="NAME=VALUE",
                   help="an option of --framework, spelled as the library spells it (repeatable)")

    d = sub.add_parser("make-data", help="regenerate the shipped datasets in data/ (byte-identical)")
    d.add_argument("--out-dir", default=None,
                   help="default: the repository's data/ folder (required when the package is installed)")

    e = sub.add_parser("experiment", help="run an experiment of docs/science.md (E1–E10), write NAME.csv and NAME.png")
    e.add_argument("name", help="e1, e2, ... (see README)")
    e.add_argument("--seeds", type=bounded(1, MAX_SEEDS), default=3)
    e.add_argument("--out", default="results")
    e.add_argument("--fast", action="store_true", help="shrunk run (same as LOSSREDUCE_FAST=1)")

    p = sub.add_parser("dp-check", help="data parallel in real processes vs one process")
    p.add_argument("--ranks", type=bounded(1, MAX_DP_RANKS), default=2)
    p.add_argument("--scheme", default="token-mean", choices=SCHEMES)
    p.add_argument("--normalization", default="global", choices=NORMALIZATIONS)
    p.add_argument("--alpha", type=_finite_float, default=0.5)
    p.add_argument("--backend", default=None, choices=("gloo", "nccl"), help="gloo (CPU, default) or nccl")
    return parser


def _table_heading(title: str, frame) -> str:
    return f"{title} (first 10 of {len(frame)}):" if len(frame) > 10 else f"{title} ({len(frame)}):"


def _warn_about_empty_micro_batches(table, ranks: int, micro_batches: int, normalization: str) -> None:
    used, rows = len(table[["rank", "micro_batch"]].drop_duplicates()), table.row.nunique()
    empty = ranks * micro_batches - used
    if empty:
        effect = ("; under --normalization local each one drops its share, so the weights sum to less"
                  if normalization == "local" else "")
        warnings.warn(InputWarning(
            f"{empty} of {ranks * micro_batches} micro-batches are empty ({rows} row{'s' * (rows != 1)} for "
            f"--ranks {ranks} × --micro-batches {micro_batches}){effect}"), stacklevel=2)


def cmd_weights(args) -> int:
    from .chats import load_chats
    from .outputs import check_output_file, replacing

    out = check_output_file(args.out, inputs=[args.file]) if args.out is not None else None
    if args.tokenizer == "":
        raise OptionError("--tokenizer: empty folder name")
    if args.option and not args.framework:
        raise OptionError("--option needs --framework")
    given = [flag for flag, value in (("--scheme", args.scheme), ("--normalization", args.normalization),
                                      ("--l-max", args.l_max)) if value is not None]
    if args.framework and given:
        raise OptionError(f"--framework {args.framework} sets the scheme and normalization itself; drop "
                          f"{', '.join(given)} (or drop --framework)")
    chats = load_chats(args.file, on_no_assistant="skip" if args.skip_no_assistant else "error")
    # torch is imported only now, after the cheap checks, so bad input fails in a blink
    from .hf_tokenizer import load_tokenizer
    from .reductions import Plan, Scheme
    from .report import weights_summary, weights_table

    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer is not None else None
    scheme, rec, spelled = Scheme(args.scheme or "token-mean", alpha=args.alpha, l_max=args.l_max,
                                  delta_l_alpha=args.delta_l_alpha), None, ""
    normalization = args.normalization or "global"
    if args.framework:
        from .frameworks import framework

        fw = framework(args.framework)
        options = {name: fw[name].parse(value) if name in fw else value for name, value in args.option}
        rec = fw.recipe(micro_batches=args.micro_batches, **options)
        scheme, normalization = rec.scheme, rec.normalization
        spelled = f"framework={args.framework} ({fw.version}: {rec.spelled}), "
    table = weights_table(chats, scheme, Plan(args.ranks, args.micro_batches, normalization), layout=args.layout,
                          row_len=args.row_len, tokenizer=tokenizer, recipe=rec)
    _warn_about_empty_micro_batches(table, args.ranks, args.micro_batches, normalization)
    per_sample, per_turn = weights_summary(table)
    print(f"{args.file}: {len(chats)} conversations, {int(table.loss_mask.sum())} loss tokens "
          f"({args.tokenizer or 'byte template'}), {spelled}"
          f"scheme={scheme.label}, format={args.layout}, R={args.ranks}, K={args.micro_batches}, "
          f"normalization={normalization}, total weight={table.weight.sum():.6g}")
    for title, frame in (("per sample", per_sample), ("per assistant turn", per_turn)):
        print(f"\n{_table_heading(title, frame)}")
        print(frame.head(10).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if out is not None:
        with replacing(out) as tmp:
            table.to_csv(tmp, index=False)
        print(f"\nwrote {len(table)} rows to {out}")
    return 0


def cmd_make_data(args) -> int:
    from .notebook import data_path, is_source_checkout
    from .outputs import check_output_dir
    from .synth import SHIPPED, write_shipped

    if args.out_dir is None and not is_source_checkout():
        raise OptionError(f"make-data: the shipped data is read-only inside the installed package ({data_path()}); "
                          "pass --out-dir DIR to write a copy")
    out_dir = args.out_dir if args.out_dir is not None else data_path()
    for path in write_shipped(check_output_dir(out_dir, option="--out-dir", files=SHIPPED)):
        print(f"wrote {path}")
    return 0


def cmd_experiment(args) -> int:
    import os

    if args.fast:
        os.environ["LOSSREDUCE_FAST"] = "1"
    from .experiments import run_experiment

    result = run_experiment(args.name, seeds=args.seeds, out_dir=args.out)
    print(result.verdict.to_string(index=False))
    print(f"wrote {result.csv_path} and {result.png_path}")
    return 0 if bool(result.verdict["passed"].fillna(True).all()) else 1


def cmd_dp_check(args) -> int:
    from .distributed import dp_check_main

    return dp_check_main(args)


COMMANDS = {"weights": cmd_weights, "make-data": cmd_make_data, "experiment": cmd_experiment,
            "dp-check": cmd_dp_check}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every `finally` (child processes, temporary files) runs."""


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises():
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_as_lines():
    """InputWarnings print as one line `warning: ...` (no source line); other warnings as usual."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", InputWarning)
        warnings.showwarning = show
        yield


def main(argv=None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8 must not crash a print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    command = "python -m lossreduce_demo"  # until the arguments are parsed (importing torch takes a while)
    with _sigterm_raises(), _warnings_as_lines():
        try:
            args = build_parser().parse_args(argv)
            command = args.command
            return COMMANDS[args.command](args)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"error: {command} interrupted (Ctrl-C); stopped, nothing half-written", file=sys.stderr)
            return 130
        except Terminated:
            print(f"error: {command} terminated (SIGTERM); stopped, nothing half-written", file=sys.stderr)
            return 143


__all__ = ["main", "build_parser", "bounded"]
