"""Command line: `python -m lossreduce_demo {weights,make-data,experiment,dp-check} ...`.

User errors (bad files, bad options) print one line `error: ...` and exit with status 2 — no traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .chats import ChatFormatError


def _option(parse, kind: str, ok, requirement: str):
    """An argparse type: parse with `parse`, then require `ok(value)`; errors say what was expected."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return convert


_positive_int = _option(int, "a whole number", lambda v: v >= 1, ">= 1")
_positive_float = _option(float, "a number", lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
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
    w.add_argument("--alpha", type=_finite_float, default=0.5, help="exponent of length-power")
    w.add_argument("--format", default="multiturn", choices=LAYOUTS, dest="layout")
    w.add_argument("--ranks", type=_positive_int, default=1, help="data-parallel ranks R")
    w.add_argument("--micro-batches", type=_positive_int, default=1, help="gradient-accumulation steps K")
    w.add_argument("--normalization", default=None, choices=NORMALIZATIONS, help="default: global")
    w.add_argument("--l-max", type=_positive_float, default=None,
                   help="constant L_max of seq-mean-token-sum-norm (default: the longest sample's loss tokens)")
    w.add_argument("--row-len", type=_positive_int, default=None,
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
    d.add_argument("--out-dir", default=None, help="default: the data/ folder beside the package")

    e = sub.add_parser("experiment", help="run an experiment of docs/science.md (E1–E7), write NAME.csv and NAME.png")
    e.add_argument("name", help="e1, e2, ... (see README)")
    e.add_argument("--seeds", type=_positive_int, default=3)
    e.add_argument("--out", default="results")
    e.add_argument("--fast", action="store_true", help="shrunk run (same as LOSSREDUCE_FAST=1)")

    p = sub.add_parser("dp-check", help="data parallel in real processes vs one process")
    p.add_argument("--ranks", type=_positive_int, default=2)
    p.add_argument("--scheme", default="token-mean", choices=SCHEMES)
    p.add_argument("--normalization", default="global", choices=NORMALIZATIONS)
    p.add_argument("--alpha", type=_finite_float, default=0.5)
    p.add_argument("--backend", default=None, help="gloo (CPU, default) or nccl")
    return parser


def cmd_weights(args) -> int:
    from .chats import load_chats
    from .hf_tokenizer import load_tokenizer
    from .reductions import Scheme
    from .report import weights_summary, weights_table

    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    scheme, rec, spelled = Scheme(args.scheme or "token-mean", alpha=args.alpha, l_max=args.l_max), None, ""
    normalization = args.normalization or "global"
    if args.framework:
        from .frameworks import framework

        given = [flag for flag, value in (("--scheme", args.scheme), ("--normalization", args.normalization),
                                          ("--l-max", args.l_max)) if value is not None]
        if given:
            raise ValueError(f"--framework {args.framework} sets the scheme and normalization itself; drop "
                             f"{', '.join(given)} (or drop --framework)")

        fw = framework(args.framework)
        options = {name: fw[name].parse(value) if name in fw else value for name, value in args.option}
        rec = fw.recipe(micro_batches=args.micro_batches, **options)
        scheme, normalization = rec.scheme, rec.normalization
        spelled = f"framework={args.framework} ({fw.version}: {rec.spelled}), "
    elif args.option:
        raise ValueError("--option needs --framework")
    chats = load_chats(args.file, on_no_assistant="skip" if args.skip_no_assistant else "error")
    table = weights_table(chats, scheme, layout=args.layout, ranks=args.ranks, micro_batches=args.micro_batches,
                          normalization=normalization, row_len=args.row_len, tokenizer=tokenizer, recipe=rec)
    per_sample, per_turn = weights_summary(table)
    print(f"{args.file}: {len(chats)} conversations, {int(table.loss_mask.sum())} loss tokens "
          f"({args.tokenizer or 'byte template'}), {spelled}"
          f"scheme={scheme.label}, format={args.layout}, R={args.ranks}, K={args.micro_batches}, "
          f"normalization={normalization}, total weight={table.weight.sum():.6g}")
    for title, frame in (("per sample", per_sample), ("per assistant turn", per_turn)):
        print(f"\n{title} (first 10 of {len(frame)}):")
        print(frame.head(10).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"\nwrote {len(table)} rows to {args.out}")
    return 0


def cmd_make_data(args) -> int:
    from .report import data_path
    from .synth import write_shipped

    for path in write_shipped(args.out_dir or data_path()):
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ChatFormatError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
