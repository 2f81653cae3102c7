"""`python -m lossreduce_demo weights`: the CSV and summaries on shipped data, and every kind of bad input.

A handful of runs go through real processes (exit status, stderr, no traceback); they start together because
each spends ~1 s importing torch. The rest call `cli.main(argv)` in-process, where a traceback would surface
as an uncaught exception.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lossreduce_demo.cli import main
from lossreduce_demo.reductions import SCHEMES

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "default_chats.jsonl"
COLUMNS = ["sample", "conversation", "turn", "position", "token", "role", "loss_mask", "rank", "micro_batch",
           "weight"]
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of the CLI run in this process."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse rejects options with SystemExit(2)
        rc = stop.code
    out, err = capsys.readouterr()
    return rc, out, err


def expected_total(table: pd.DataFrame, scheme: str, l_max: float | None = None) -> float:
    """What global weights must add up to, from the CSV's own labels (docs/science.md §2)."""
    loss = table[table.loss_mask == 1]
    per_sample = loss.groupby("sample").size()
    N, B_g = len(loss), len(per_sample)
    return {"seq-mean-token-sum": N / B_g, "token-sum": float(N),
            "seq-mean-token-sum-norm": N / (B_g * (l_max or per_sample.max()))}.get(scheme, 1.0)


def check_weights_output(out: str, csv: Path, scheme: str, l_max=None, normalization="global") -> pd.DataFrame:
    assert "256 conversations" in out and f"scheme={scheme}" in out
    assert "per sample (first 10 of" in out and "per assistant turn (first 10 of" in out
    table = pd.read_csv(csv)
    assert set(COLUMNS) <= set(table.columns)
    assert table.conversation.nunique() == 256
    assert (table.weight >= 0).all() and table.weight.notna().all()
    assert (table.weight[table.loss_mask == 0] == 0).all()
    assert set(table.role) <= {"bos", "system", "user", "assistant"}
    if normalization == "global":
        assert table.weight.sum() == pytest.approx(expected_total(table, scheme, l_max), rel=1e-9)
    return table


# ------------------------------------------------------------------ real processes, started together


def write_lines(path: Path, *lines) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    too_long = write_lines(tmp / "long.jsonl", GOOD)
    runs = {
        "token-mean": ["weights", DATA, "--out", tmp / "tm.csv"],
        "seq-mean-split": ["weights", DATA, "--scheme", "seq-mean-token-mean", "--format", "split", "--ranks", "2",
                           "--micro-batches", "3", "--out", tmp / "sm.csv"],
        "too-long": ["weights", too_long, "--format", "packed", "--row-len", "8"],
    }
    env = dict(os.environ, LOSSREDUCE_THREADS="1")
    started = {name: subprocess.Popen([sys.executable, "-m", "lossreduce_demo", *map(str, argv)], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, argv in runs.items()}
    done = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=120)
        done[name] = (proc.returncode, out, err)
    return tmp, done, too_long


def test_process_runs_write_the_csv_and_summaries(processes):
    tmp, done, _ = processes
    for name, csv, scheme in [("token-mean", "tm.csv", "token-mean"), ("seq-mean-split", "sm.csv",
                                                                        "seq-mean-token-mean")]:
        rc, out, err = done[name]
        assert rc == 0, err
        assert "Traceback" not in err
        check_weights_output(out, tmp / csv, scheme)
    split = pd.read_csv(tmp / "sm.csv")
    assert sorted(split[["rank", "micro_batch"]].drop_duplicates().itertuples(index=False)) == [
        (r, k) for r in range(2) for k in range(3)]


def test_local_token_mean_weighs_by_micro_batch_counts(tmp_path, capsys):
    """Naive token-mean: w = 1/(K·R·n_rk), n_rk the loss tokens of the token's own micro-batch."""
    csv = tmp_path / "local.csv"
    rc, out, err = run_main(["weights", DATA, "--format", "packed", "--row-len", "256", "--micro-batches", "4",
                             "--ranks", "2", "--normalization", "local", "--out", csv], capsys)
    assert rc == 0, err
    table = check_weights_output(out, csv, "token-mean", normalization="local")
    loss = table[table.loss_mask == 1]
    n_rk = loss.groupby(["rank", "micro_batch"]).weight.transform("size")
    assert loss.weight.to_numpy() == pytest.approx((1 / (4 * 2 * n_rk)).to_numpy(), rel=1e-9)
    assert n_rk.nunique() > 1  # and so it is not 1/N


def test_process_error_is_one_line_without_traceback(processes):
    _, done, too_long = processes
    rc, out, err = done["too-long"]
    assert rc == 2 and out == ""
    assert err == (f"error: {too_long}:1: messages: the conversation has 12 tokens, longer than the limit of 8 "
                   "(raise the row length / context, or drop or shorten this conversation)\n")


# ------------------------------------------------------------------ in-process: schemes × formats × R, K


WEIGHT_RUNS = [
    ("token-mean", "split", ["--ranks", "3", "--micro-batches", "2"]),
    ("seq-mean-token-mean", "packed", ["--row-len", "128"]),
    ("seq-mean-token-sum", "multiturn", ["--micro-batches", "5"]),
    ("seq-mean-token-sum-norm", "multiturn", ["--l-max", "64", "--ranks", "2"]),
    ("seq-mean-token-sum-norm", "packed", ["--micro-batches", "3"]),
    ("token-sum", "packed", ["--ranks", "4", "--row-len", "200"]),
    ("turn-mean", "multiturn", ["--ranks", "2", "--micro-batches", "2"]),
    ("length-power", "split", ["--alpha", "0.25"]),
]


@pytest.mark.parametrize("scheme, layout, extra", WEIGHT_RUNS)
def test_weights_for_every_scheme_and_format(tmp_path, capsys, scheme, layout, extra):
    csv = tmp_path / "w.csv"
    rc, out, err = run_main(["weights", DATA, "--scheme", scheme, "--format", layout, *extra, "--out", csv],
                            capsys)
    assert rc == 0, err
    l_max = float(extra[extra.index("--l-max") + 1]) if "--l-max" in extra else None
    shown = f"scheme={scheme}" if scheme != "length-power" else "scheme=length-power α=0.25"
    check_weights_output(out.replace(shown, f"scheme={scheme}"), csv, scheme, l_max)


def test_every_scheme_and_format_is_exercised():
    assert {scheme for scheme, _, _ in WEIGHT_RUNS} == set(SCHEMES)
    assert {layout for _, layout, _ in WEIGHT_RUNS} == {"split", "multiturn", "packed"}


# ------------------------------------------------------------------ in-process: every kind of bad input

NO_ASSISTANT = {"messages": [{"role": "user", "content": "anyone?"}]}
BAD_FILES = {
    # name: (lines or raw bytes, expected text after "error: PATH")
    "not-utf8": (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n', ":1: not valid UTF-8"),
    "invalid-json": ([GOOD, '{"messages": [}'], ":2: invalid JSON"),
    "not-an-object": ([GOOD, GOOD, "[1, 2]"], ":3: expected a JSON object"),
    "missing-messages": ([{"conversation": []}], ":1: messages: missing"),
    "messages-not-a-list": ([{"messages": "hello"}], ":1: messages: expected a list, got string"),
    "empty-conversation": ([GOOD, {"messages": []}], ":2: messages: empty conversation"),
    "message-not-an-object": ([{"messages": ["hi"]}], ":1: messages[0]: expected an object"),
    "missing-role": ([{"messages": [{"content": "hi"}]}], ":1: messages[0].role: missing"),
    "unknown-role": ([{"messages": [{"role": "tool", "content": "x"}]}], ":1: messages[0].role: unknown role 'tool'"),
    "content-not-a-string": ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]}],
                             ":1: messages[1].content: expected a string, got number"),
    "no-assistant-turn": ([GOOD, NO_ASSISTANT], ":2: messages: no assistant turn"),
    "empty-file": (b"", ": no conversations"),
    "blank-lines-only": (b"\n\n  \n", ": no conversations"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_give_one_error_line_with_file_line_and_field(tmp_path, capsys, name):
    content, expected = BAD_FILES[name]
    path = tmp_path / f"{name}.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_lines(path, *content)
    rc, out, err = run_main(["weights", path], capsys)
    assert rc == 2
    assert err.startswith(f"error: {path}{expected}"), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_file_and_directory(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    rc, _, err = run_main(["weights", missing], capsys)
    assert rc == 2 and err == f"error: {missing}: file not found\n"
    rc, _, err = run_main(["weights", tmp_path], capsys)
    assert rc == 2 and err.startswith(f"error: {tmp_path}: is a directory")


def test_skip_no_assistant(tmp_path, capsys):
    path = write_lines(tmp_path / "mixed.jsonl", NO_ASSISTANT, GOOD, NO_ASSISTANT)
    with pytest.warns(UserWarning) as warned:
        rc, out, err = run_main(["weights", path, "--skip-no-assistant"], capsys)
    assert [str(w.message) for w in warned] == [f"{path}:{n}: messages: no assistant turn; conversation skipped"
                                                for n in (1, 3)]
    assert rc == 0 and f"{path}: 1 conversations, 6 loss tokens" in out
    only = write_lines(tmp_path / "only.jsonl", NO_ASSISTANT)
    with pytest.warns(UserWarning):
        rc, _, err = run_main(["weights", only, "--skip-no-assistant"], capsys)
    assert rc == 2 and err.startswith(f"error: {only}: no conversations (1 skipped")


@pytest.mark.parametrize("option, value, expected", [
    ("--ranks", "0", "argument --ranks: must be >= 1"),
    ("--micro-batches", "two", "argument --micro-batches: expected a whole number"),
    ("--micro-batches", "-3", "argument --micro-batches: must be >= 1"),
    ("--alpha", "nan", "argument --alpha: must be finite"),
    ("--alpha", "inf", "argument --alpha: must be finite"),
    ("--l-max", "-1", "argument --l-max: must be a finite number > 0"),
    ("--l-max", "nan", "argument --l-max: must be a finite number > 0"),
    ("--row-len", "0", "argument --row-len: must be >= 1"),
    ("--scheme", "mean", "argument --scheme: invalid choice: 'mean'"),
    ("--format", "chatml", "argument --format: invalid choice: 'chatml'"),
    ("--normalization", "per-device", "argument --normalization: invalid choice"),
])
def test_bad_option_values_are_rejected_by_name(capsys, option, value, expected):
    rc, out, err = run_main(["weights", DATA, option, value], capsys)
    assert rc == 2 and out == ""
    assert f"error: {expected}" in err and "Traceback" not in err


def test_too_long_conversation_names_its_line(tmp_path, capsys):
    path = write_lines(tmp_path / "long.jsonl", GOOD, {"messages": [{"role": "user", "content": "x" * 40},
                                                                    {"role": "assistant", "content": "y"}]})
    rc, _, err = run_main(["weights", path, "--format", "packed", "--row-len", "20"], capsys)
    n_tokens = 1 + (1 + 40 + 1) + (1 + 1 + 1)  # <bos>, <user> x*40 <eot>, <assistant> y <eot>
    assert rc == 2 and err.startswith(f"error: {path}:2: messages: the conversation has {n_tokens} tokens")


# ---------------------------------------------------------------- --framework (lossreduce_demo.frameworks)


def test_framework_option_report_and_csv_equal_the_preset(tmp_path, capsys):
    """The issue's command: TRL's dr_grpo with max_completion_length=64 on 2 ranks × 4 micro-batches."""
    from lossreduce_demo.chats import load_chats
    from lossreduce_demo.frameworks import effective_weights
    from lossreduce_demo.layouts import make_layout

    csv = tmp_path / "trl.csv"
    rc, out, err = run_main(["weights", DATA, "--framework", "trl-grpo", "--option", "loss_type=dr_grpo",
                             "--option", "max_completion_length=64", "--micro-batches", "4", "--ranks", "2",
                             "--out", csv], capsys)
    assert rc == 0, err
    assert "framework=trl-grpo (TRL 1.16.0: GRPOConfig(loss_type='dr_grpo', max_completion_length=64" in out
    table = check_weights_output(out, csv, "seq-mean-token-sum-norm L=64", normalization="local")
    batch = make_layout(load_chats(DATA), "multiturn")
    w = effective_weights(batch, "trl-grpo", ranks=2, micro_batches=4, loss_type="dr_grpo", max_completion_length=64)
    assert table.weight.sum() == pytest.approx(float(w.sum()), rel=1e-12)
    loss = table[table.loss_mask == 1]
    assert loss.weight.to_numpy() == pytest.approx(w[batch.loss_mask].numpy(), rel=1e-12)  # same token order


@pytest.mark.parametrize("argv, expected", [
    (["--framework", "deepspeed"], "argument --framework: invalid choice: 'deepspeed'"),
    (["--framework", "verl", "--option", "loss_agg_mode=mean"], "verl: loss_agg_mode='mean' is not allowed; "
                                                                "allowed: token-mean, token-sum"),
    (["--framework", "verl", "--option", "horizon=64"], "verl has no option 'horizon'; its options: loss_agg_mode"),
    (["--framework", "trl-grpo", "--option", "max_completion_length=8"], "a sample has 54 loss tokens, more than "
                                                                         "max_completion_length=8"),
    (["--framework", "megatron", "--option", "calculate_per_token_loss=maybe"],
     "megatron: calculate_per_token_loss='maybe' is not allowed; allowed: True, False"),
    (["--framework", "megatron", "--scheme", "token-mean"], "--framework megatron sets the scheme and "
                                                            "normalization itself; drop --scheme"),
    (["--option", "loss_type=dapo"], "--option needs --framework"),
    (["--framework", "verl", "--option", "loss_agg_mode"], "argument --option: expected NAME=VALUE"),
])
def test_bad_framework_options_are_one_line_naming_the_option(capsys, argv, expected):
    rc, out, err = run_main(["weights", DATA, *argv], capsys)
    assert rc == 2 and out == ""
    assert f"error: {expected}" in err and "Traceback" not in err
