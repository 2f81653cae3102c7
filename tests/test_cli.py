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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    delta_l = float((per_sample**0.5).sum() / (per_sample**-0.5).sum())  # WEIGHT_RUNS' delta-l α = 0.5
    return {"seq-mean-token-sum": N / B_g, "token-sum": float(N), "delta-l": delta_l,
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
    ("delta-l", "packed", ["--delta-l-alpha", "0.5"]),
]


@pytest.mark.parametrize("scheme, layout, extra", WEIGHT_RUNS)
def test_weights_for_every_scheme_and_format(tmp_path, capsys, scheme, layout, extra):
    csv = tmp_path / "w.csv"
    rc, out, err = run_main(["weights", DATA, "--scheme", scheme, "--format", layout, *extra, "--out", csv],
                            capsys)
    assert rc == 0, err
    l_max = float(extra[extra.index("--l-max") + 1]) if "--l-max" in extra else None
    shown = {"length-power": "scheme=length-power α=0.25", "delta-l": "scheme=delta-l α=0.5"}.get(scheme,
                                                                                                 f"scheme={scheme}")
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


def test_skip_no_assistant_prints_one_line_per_skipped_conversation(tmp_path, capsys):
    path = write_lines(tmp_path / "mixed.jsonl", NO_ASSISTANT, GOOD, NO_ASSISTANT)
    rc, out, err = run_main(["weights", path, "--skip-no-assistant"], capsys)
    assert err.splitlines() == [f"warning: {path}:{n}: messages: no assistant turn; conversation skipped"
                                for n in (1, 3)]
    assert rc == 0 and f"{path}: 1 conversations, 6 loss tokens" in out
    only = write_lines(tmp_path / "only.jsonl", NO_ASSISTANT)
    rc, _, err = run_main(["weights", only, "--skip-no-assistant"], capsys)
    assert rc == 2 and err.splitlines()[-1].startswith(f"error: {only}: no conversations (1 skipped")


def test_no_assistant_error_names_the_cli_flag(tmp_path, capsys):
    path = write_lines(tmp_path / "mixed.jsonl", GOOD, NO_ASSISTANT)
    rc, _, err = run_main(["weights", path], capsys)
    assert rc == 2 and "--skip-no-assistant" in err and err.count("\n") == 1


@pytest.mark.parametrize("option, value, expected", [
    ("--ranks", "0", "argument --ranks: must be between 1 and 1024"),
    ("--micro-batches", "two", "argument --micro-batches: expected a whole number"),
    ("--micro-batches", "-3", "argument --micro-batches: must be between 1 and 1024"),
    ("--alpha", "nan", "argument --alpha: must be finite"),
    ("--alpha", "inf", "argument --alpha: must be finite"),
    ("--l-max", "-1", "argument --l-max: must be >= 1"),
    ("--l-max", "nan", "argument --l-max: must be >= 1"),
    ("--l-max", "5e-324", "argument --l-max: must be >= 1"),
    ("--l-max", "0.5", "argument --l-max: must be >= 1"),
    ("--row-len", "0", "argument --row-len: must be between 1 and 1048576"),
    ("--row-len", "1000000000", "argument --row-len: must be between 1 and 1048576"),
    ("--ranks", "10000000", "argument --ranks: must be between 1 and 1024"),
    ("--ranks", "9" * 400, "argument --ranks: must be between 1 and 1024"),  # too big for a float, still an int
    ("--ranks", "9" * 5000, "argument --ranks: expected a whole number"),  # past Python's int-conversion limit
    ("--micro-batches", "10000000", "argument --micro-batches: must be between 1 and 1024"),
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


# ------------------------------------------------------------------ hardening: numbers, bounds, outputs, errors


@pytest.mark.parametrize("alpha", ["300", "-1000", "1e308", "-1e308"])
def test_length_power_weights_sum_to_one_for_extreme_alpha(tmp_path, capsys, alpha):
    csv = tmp_path / "w.csv"
    rc, out, err = run_main(["weights", DATA, "--scheme", "length-power", f"--alpha={alpha}", "--out", csv], capsys)
    assert rc == 0, err
    assert "total weight=1\n" in out and "nan" not in out and "inf" not in out
    table = pd.read_csv(csv)
    assert table.weight.notna().all() and table.weight.sum() == pytest.approx(1, rel=1e-12)
    longest = table[table.loss_mask == 1].groupby("sample").size()
    share = table.groupby("sample").weight.sum()
    winners = longest[longest == (longest.max() if float(alpha) > 0 else longest.min())].index
    assert share[winners].sum() > 0.99  # the extreme lengths take (nearly) the whole step


def test_empty_micro_batches_print_one_warning(capsys):
    rc, out, err = run_main(["weights", ROOT / "data" / "george_washington.jsonl", "--micro-batches", "4",
                             "--normalization", "local"], capsys)
    assert rc == 0 and "total weight=0.25" in out
    assert err == ("warning: 3 of 4 micro-batches are empty (1 row for --ranks 1 × --micro-batches 4); under "
                   "--normalization local each one drops its share, so the weights sum to less\n")
    rc, out, err = run_main(["weights", DATA, "--micro-batches", "4"], capsys)
    assert rc == 0 and err == ""


@pytest.mark.parametrize("argv, expected", [
    (["experiment", "e1", "--seeds", "1000000"], "argument --seeds: must be between 1 and 100"),
    (["dp-check", "--ranks", "64"], "argument --ranks: must be between 1 and 16"),
    (["dp-check", "--backend", "mpi"], "argument --backend: invalid choice: 'mpi'"),
])
def test_other_commands_bound_their_options(capsys, argv, expected):
    rc, out, err = run_main(argv, capsys)
    assert rc == 2 and out == "" and f"error: {expected}" in err


def test_a_layout_over_the_slot_limit_is_refused_before_allocating(tmp_path, capsys):
    from lossreduce_demo.layouts import MAX_SLOTS

    long = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 200_000}]}
    path = write_lines(tmp_path / "padded.jsonl", long, *[GOOD] * 30)
    rc, _, err = run_main(["weights", path], capsys)
    assert rc == 2 and err == (f"error: the multiturn layout would be 31 rows × 200,006 tokens = 6,200,186 slots, "
                               f"more than the limit of {MAX_SLOTS:,}; pack them (--format packed) to drop the "
                               "padding, or drop the longest conversation\n")
    rc, out, err = run_main(["weights", path, "--format", "packed"], capsys)
    assert rc == 0 and "31 conversations" in out


def test_out_is_checked_before_the_work_and_never_overwrites_the_input(tmp_path, capsys, monkeypatch):
    import lossreduce_demo.report as report

    def no_work(*args, **kwargs):
        raise AssertionError("the destination must be checked before any work")

    monkeypatch.setattr(report, "weights_table", no_work)
    data = write_lines(tmp_path / "chats.jsonl", GOOD)
    before = data.read_bytes()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (data, f"--out {data}: is the input file {data}; refusing to overwrite it"),
        (tmp_path / "." / "chats.jsonl", f"--out {tmp_path / '.' / 'chats.jsonl'}: is the input file {data}"),
        ("", "--out: empty file name"),
        (tmp_path, f"--out {tmp_path}: is a directory; give a file name"),
        (tmp_path / "a_file" / "w.csv", f"--out {tmp_path / 'a_file' / 'w.csv'}: {tmp_path / 'a_file'} is not a "
                                        "directory"),
    ]
    for out, expected in cases:
        rc, stdout, err = run_main(["weights", data, "--out", out], capsys)
        assert rc == 2 and stdout == "" and err.startswith(f"error: {expected}"), err
    assert data.read_bytes() == before


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, capsys, monkeypatch):
    import errno

    csv = tmp_path / "w.csv"
    csv.write_text("old results\n")
    original = pd.DataFrame.to_csv

    def disk_full(self, path, **kwargs):
        original(self.head(3), path, **kwargs)  # a few rows reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    rc, _, err = run_main(["weights", DATA, "--out", csv], capsys)
    assert rc == 2 and err == f"error: --out {csv}: cannot write: No space left on device\n"
    assert csv.read_text() == "old results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.csv"]  # no temporary file left behind


def test_a_new_csv_gets_the_usual_permissions(tmp_path, capsys):
    csv = tmp_path / "sub" / "w.csv"
    rc, _, err = run_main(["weights", ROOT / "data" / "george_washington.jsonl", "--out", csv], capsys)
    umask = os.umask(0)
    os.umask(umask)
    assert rc == 0 and csv.stat().st_mode & 0o777 == 0o666 & ~umask


def test_experiment_checks_its_destination_before_training(tmp_path, capsys, monkeypatch):
    from lossreduce_demo import experiments

    monkeypatch.setitem(experiments.REGISTRY, "e1", "sft:not_to_be_called")  # reaching it would raise
    a_file = write_lines(tmp_path / "results", GOOD)
    rc, _, err = run_main(["experiment", "e1", "--out", a_file], capsys)
    assert rc == 2 and err == f"error: --out {a_file}: exists and is not a directory\n"
    (tmp_path / "out" / "e1.csv").mkdir(parents=True)
    rc, _, err = run_main(["experiment", "e1", "--out", tmp_path / "out"], capsys)
    assert rc == 2 and err.startswith(f"error: --out {tmp_path / 'out' / 'e1.csv'}: is a directory")
    rc, _, err = run_main(["experiment", "e42"], capsys)
    assert rc == 2 and err.startswith("error: unknown experiment 'e42'; choose one of e1,")


def test_empty_folder_names_are_errors_not_the_current_folder(capsys):
    rc, _, err = run_main(["make-data", "--out-dir", ""], capsys)
    assert rc == 2 and err == "error: --out-dir: empty folder name\n"
    rc, _, err = run_main(["weights", DATA, "--tokenizer", ""], capsys)
    assert rc == 2 and err == "error: --tokenizer: empty folder name\n"


def test_internal_errors_are_tracebacks_not_one_line_errors(monkeypatch, capsys):
    import lossreduce_demo.report as report

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(report, "weights_table", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["weights", str(DATA)])


@pytest.mark.parametrize("signal_exception, rc, line", [
    (KeyboardInterrupt, 130, "error: weights interrupted (Ctrl-C); stopped, nothing half-written\n"),
    ("Terminated", 143, "error: weights terminated (SIGTERM); stopped, nothing half-written\n"),
])
def test_interrupts_exit_with_one_line(monkeypatch, capsys, signal_exception, rc, line):
    import lossreduce_demo.cli as cli

    exc = getattr(cli, signal_exception) if isinstance(signal_exception, str) else signal_exception

    def interrupted(args):
        raise exc()

    monkeypatch.setitem(cli.COMMANDS, "weights", interrupted)
    assert run_main(["weights", DATA], capsys) == (rc, "", line)


def test_sigterm_becomes_an_exception_while_a_command_runs(monkeypatch, capsys):
    import signal

    import lossreduce_demo.cli as cli

    def terminate_self(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM should have stopped the command")

    monkeypatch.setitem(cli.COMMANDS, "weights", terminate_self)
    before = signal.getsignal(signal.SIGTERM)
    assert run_main(["weights", DATA], capsys)[0] == 143
    assert signal.getsignal(signal.SIGTERM) == before  # restored afterwards


def test_short_tables_say_how_many_rows_they_have(capsys):
    rc, out, _ = run_main(["weights", ROOT / "data" / "george_washington.jsonl"], capsys)
    assert rc == 0 and "per sample (1):" in out and "per assistant turn (3):" in out and "first 10 of" not in out


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "", "ASSISTANT"]) | _json_values},
    optional={"content": st.text(max_size=12) | _json_values, "tool_calls": _json_values}), max_size=4)
_lines = st.one_of(
    st.builds(lambda m: json.dumps({"messages": m}), _messages),
    st.builds(json.dumps, _json_values),
    st.text(max_size=30),  # not JSON at all
    st.just(json.dumps(GOOD)))
_options = st.lists(st.sampled_from([
    ["--scheme", "length-power", "--alpha", "-40"], ["--scheme", "seq-mean-token-sum-norm"], ["--format", "split"],
    ["--format", "packed", "--row-len", "16"], ["--micro-batches", "7", "--normalization", "local"],
    ["--ranks", "3"], ["--skip-no-assistant"], ["--scheme", "turn-mean"]]), max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_lines, min_size=0, max_size=5), options=_options)
def test_any_file_gives_a_report_or_one_error_line_never_a_traceback_or_nan(tmp_path_factory, lines, options, capsys):
    """The issue's promise as a property: whatever the file, `weights` exits 0 with finite numbers or 2 with
    one `error:` line (plus `warning:` lines); an exception escaping `main` fails the test."""
    path = tmp_path_factory.mktemp("fuzz") / "chats.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    rc, out, err = run_main(["weights", path, *[a for option in options for a in option]], capsys)
    assert rc in (0, 2), (rc, err)
    assert all(line.startswith(("error: ", "warning: ")) for line in err.splitlines()), err
    if rc == 0:
        assert "nan" not in out.lower() and "inf" not in out.lower().replace("info", "")
    else:
        assert err.splitlines()[-1].startswith("error: ") and out == ""
