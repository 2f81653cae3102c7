"""Real data parallel (torch.distributed, gloo, DDP) against one process: docs/science.md §3 and E3.

Process start-up (torch + DDP's first import) costs seconds, so everything that can share one spawn of the two
ranks does: the `errors` fixture covers every scheme x the three normalizations x skewed/equal data, with K = 2
micro-batches per rank (DDP's no_sync path)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(150)  # a hung rank must fail the test, never hang CI

RANKS, K = 2, 2
ROOT = Path(__file__).resolve().parent.parent
RESULT_LINE = re.compile(r"^max relative gradient difference vs single process: (\d\.\de[+-]\d\d)$")


def _children() -> list[tuple[int, str]]:
    """(pid, command line) of every live descendant of this process (psutil, else /proc)."""
    try:
        import psutil
    except ImportError:
        parent_of = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent_of[int(stat.parent.name)] = int(fields[1])
        found, frontier = [], {os.getpid()}
        while frontier:
            frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier}
            found += frontier
        return [(pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                for pid in found if Path(f"/proc/{pid}").exists()]
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append((p.pid, " ".join(p.cmdline())))
        except psutil.NoSuchProcess:
            pass
    return out


def _leftover_ranks() -> list[tuple[int, str]]:
    """Descendants other than multiprocessing's resource tracker (a per-interpreter helper, not a rank)."""
    return [(pid, cmd) for pid, cmd in _children() if "resource_tracker" not in cmd]


@pytest.fixture(scope="module")
def errors():
    from lossreduce_demo.distributed import dp_gradient_errors
    from lossreduce_demo.reductions import SCHEMES

    before = _leftover_ranks()
    frame = dp_gradient_errors(SCHEMES, ranks=RANKS, data=("skewed", "equal"), micro_batches=K, dtype="float32",
                               normalizations=("global", "local", "rank"), timeout_s=90)
    frame.attrs["leftover"] = [c for c in _leftover_ranks() if c not in before]
    return frame


def _values(frame, metric, data, normalization):
    rows = frame[(frame.metric == metric) & (frame.data == data) & (frame.normalization == normalization)]
    return dict(zip(rows.scheme, rows.value))


def test_global_equals_single_process_for_every_scheme(errors):
    from lossreduce_demo.reductions import SCHEMES

    for data in ("skewed", "equal"):
        diffs = _values(errors, "max_rel_grad_diff", data, "global")
        assert set(diffs) == set(SCHEMES)
        bad = {s: v for s, v in diffs.items() if not v <= 1e-6}
        assert not bad, f"{data}: global DDP gradient differs from one process: {bad}"


def test_local_follows_the_weight_algebra_on_skewed_data(errors):
    """Naive per-rank means: token-mean is off by far more than rounding; every scheme is off exactly as the
    core's weight maps predict (same weights -> equal, constant scale s -> |s - 1|, else visibly)."""
    from lossreduce_demo.distributed import global_batch
    from lossreduce_demo.reductions import Plan, local_vs_global

    diffs = _values(errors, "max_rel_grad_diff", "skewed", "local")
    assert diffs["token-mean"] > 1e-3
    batch = global_batch("skewed", RANKS, 8)
    tokens = batch.loss_mask.sum(1)
    assert tokens[:8].sum() < tokens[8:].sum()  # rank 0 short, rank 1 long
    for scheme, value in diffs.items():
        relation, scale = local_vs_global(batch, scheme, Plan(RANKS, K))
        if relation == "exact":
            assert value <= 1e-6, scheme
        elif relation == "scale":
            assert value == pytest.approx(abs(scale - 1), rel=1e-5), scheme
        else:
            assert value > 1e-3, scheme


def test_local_agrees_on_equal_length_data(errors):
    """Negative control: every micro-batch has the same counts, so local = global (token-sum keeps its
    constant 1/(R*K) scale, the one thing naive averaging does to a sum)."""
    diffs = _values(errors, "max_rel_grad_diff", "equal", "local")
    assert diffs.pop("token-sum") == pytest.approx(1 - 1 / (RANKS * K), rel=1e-5)
    bad = {s: v for s, v in diffs.items() if not v <= 1e-6}
    assert not bad, f"local differs on equal-length data: {bad}"


def test_real_processes_match_the_core_weight_maps(errors):
    """The DDP gradient equals, in every configuration, the gradient of reductions.effective_weights (the
    rank-local window too: each rank's own counts over its K micro-batches, no all-reduce)."""
    from lossreduce_demo.reductions import SCHEMES

    vs_core = errors[errors.metric == "max_rel_diff_vs_core"]
    assert len(vs_core) == 2 * len(SCHEMES) * 3  # data sets × schemes × normalizations
    assert (vs_core.value <= 1e-6).all(), vs_core[vs_core.value > 1e-6]


def test_processes_start_and_end_cleanly(errors):
    assert errors.attrs["rank_lines"] == [f"rank {r}: world_size={RANKS} backend=gloo" for r in range(RANKS)]
    assert errors.attrs["leftover"] == []


def _hang_on_rank_1(rank: int) -> None:
    if rank == 1:
        time.sleep(600)


@pytest.mark.timeout(60)
def test_a_hung_rank_is_stopped_by_the_timeout():
    from lossreduce_demo.distributed import spawn

    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within"):
        spawn(_hang_on_rank_1, 2, timeout_s=3)
    assert time.monotonic() - start < 30
    assert _leftover_ranks() == []


@pytest.mark.timeout(120)
def test_dp_check_cli_reports_world_size_and_the_difference_last():
    """At an extreme alpha too: length-power's reference length is all-reduced like L_max (no NaN, exit 0)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "lossreduce_demo", "dp-check", "--ranks", "2", "--scheme",
                           "length-power", "--alpha", "1e308", "--normalization", "global"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=100)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    for r in range(2):
        assert f"rank {r}: world_size=2 backend=gloo" in lines
    match = RESULT_LINE.match(lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) <= 1e-6  # fp64 on gloo: rounding only


def test_bad_settings_are_clear_errors():
    from lossreduce_demo.distributed import DPTask, product_configs

    with pytest.raises(ValueError, match="micro_batches=9"):
        DPTask(product_configs(micro_batches=9), rows_per_rank=8).check(2)
    with pytest.raises(ValueError, match="unknown normalization"):
        DPTask(product_configs(normalizations="mean")).check(2)
    with pytest.raises(ValueError, match="backend"):
        DPTask(backend="mpi").check(2)


# ------------------------------------------------------------------ signals, temporary files, exposure


def _own_session_with_ctrl_c() -> None:
    """In the child before exec: its own session (a Ctrl-C can reach its whole process group) and SIGINT at its
    default (a test run from a background shell inherits it ignored, and Python then never sees Ctrl-C)."""
    import signal

    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_dp_check(tmp_path):
    """dp-check in its own session, temporary files in tmp_path; returns the process once both ranks are up
    (their group formed, gloo listening)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path), LOSSREDUCE_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lossreduce_demo", "dp-check", "--ranks", "2"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_own_session_with_ctrl_c)
    for line in proc.stdout:
        if line.startswith("rank 1: world_size=2"):
            return proc
    raise AssertionError(f"dp-check ended before its ranks were up: {proc.wait()}, {proc.stderr.read()}")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how, status, said", [
    ("SIGTERM to the parent", 143, "error: dp-check terminated (SIGTERM); stopped, nothing half-written\n"),
    ("Ctrl-C to the group", 130, "error: dp-check interrupted (Ctrl-C); stopped, nothing half-written\n"),
])
def test_dp_check_stops_its_ranks_and_removes_its_files_on_sigterm_and_ctrl_c(tmp_path, how, status, said):
    """The ranks are paused (SIGSTOP) once up, so the signal always lands mid-run; the ranks ignore the Ctrl-C
    (when resumed before the parent acts) and the parent kills them. Local ranks listen on the loopback interface
    only, the parent not at all."""
    import signal

    psutil = pytest.importorskip("psutil")
    proc = _start_dp_check(tmp_path)
    parent = psutil.Process(proc.pid)
    ranks = [p for p in parent.children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(ranks) == 2 and list(tmp_path.glob("lossreduce-dp-*"))
    listening = [c.laddr.ip for p in [parent, *ranks] for c in p.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and set(listening) <= {"127.0.0.1", "::1"}, listening
    assert not [c for c in parent.net_connections("inet") if c.status == psutil.CONN_LISTEN]  # no TCP store
    for rank in ranks:
        rank.suspend()
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
        for rank in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):  # the parent may have killed and reaped it already
                rank.resume()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status and err == said, (proc.returncode, err)
    assert "max relative gradient difference" not in out
    assert not any(rank.is_running() and rank.status() != psutil.STATUS_ZOMBIE for rank in ranks)
    assert list(tmp_path.glob("lossreduce-dp-*")) == []


@pytest.mark.timeout(120)
def test_a_busy_master_port_is_one_line_naming_it():
    """Launched by hand (RANK, WORLD_SIZE, MASTER_* set, as a scheduler would), rank 0 opens the store on
    MASTER_PORT; a port already taken is one clear line. (torchrun's own launcher binds the port before this
    module runs and reports a busy --master_port itself: README.)"""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(ROOT), RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), LOSSREDUCE_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "lossreduce_demo.distributed"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=100)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: MASTER_PORT={port} on 127.0.0.1 is already in use (another job?); choose a "
                           "free port (torchrun --master_port=PORT, or torchrun --standalone)\n")
