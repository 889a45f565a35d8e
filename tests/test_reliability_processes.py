"""Process hygiene: the worker processes of `hglv2 benchmark` die with it.

Each case starts a real `hglv2 benchmark --jobs 2` in its own session, waits until both runs
train in worker processes, then kills the benchmark (SIGKILL, SIGTERM, or SIGINT to the whole
process group as a terminal's Ctrl-C does) and checks that no descendant survives a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.training import write_tiny_suite

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    stack = [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hygiene")
    path = tmp / "suite.yaml"
    write_tiny_suite(path, tmp / "data", "hygiene", steps=100000, checkpoint_every=0)
    from hglv2.config import load_config
    from hglv2.train import prepare_data

    prepare_data(load_config(path))  # generate the data once, outside the timed part
    return path


def _start(suite: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hglv2.cli", "benchmark", str(suite), "--out", str(out), "--jobs", "2"]
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=out.parent,
        start_new_session=True,  # its own process group: killpg reaches it, not pytest
        preexec_fn=_as_from_a_shell,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _as_from_a_shell() -> None:
    """The signal state a shell gives a command: default dispositions, nothing blocked (an ignored
    or blocked SIGINT would otherwise be inherited from whatever state the test process is in)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _wait_training(proc: subprocess.Popen, out: Path, timeout: float = 240.0) -> set[int]:
    """Wait until both runs log training steps; return the benchmark's descendants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"benchmark ended early ({proc.returncode}): {proc.stderr.read().decode()}")
        logs = list(out.glob("runs/*/seed0/log.jsonl"))
        if len(logs) == 2 and all(p.stat().st_size > 0 for p in logs):
            kids = _descendants(proc.pid)
            if len(kids) >= 2:
                return kids
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the runs did not start training in time")


def _assert_all_gone(pids: set[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    left = sorted(p for p in pids if _alive(p))
    for p in left:  # do not leak them into the rest of the test session
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes outlived the benchmark: {left}"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    ("how", "expected_rc"),
    [("SIGKILL", -signal.SIGKILL), ("SIGTERM", 143), ("Ctrl-C", 130)],
)
def test_benchmark_workers_die_with_the_benchmark(suite, tmp_path, how, expected_rc):
    out = tmp_path / "bench"
    proc = _start(suite, out)
    try:
        kids = _wait_training(proc, out)
        if how == "Ctrl-C":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal sends SIGINT to the whole group
        else:
            os.kill(proc.pid, getattr(signal, how))
        # generous: a worker inside a numba compilation (cold cache in a fresh clone) or a busy
        # machine delays the KeyboardInterrupt; what matters is that everything ends, with the code
        rc = proc.wait(timeout=120)
        _assert_all_gone(kids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read().decode()
    assert rc == expected_rc, err
    assert "Traceback" not in err, err


def _start_method() -> str:
    import multiprocessing

    return multiprocessing.get_start_method()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is Linux's default")
def test_benchmark_workers_fork_their_runs_dataloader_workers():
    """A spawned worker would spawn its DataLoader workers too; the benchmark's fork them."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from hglv2.benchmark import _worker_init

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as plain:
        assert plain.submit(_start_method).result() == "spawn"
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        assert pool.submit(_start_method).result() == "fork"


def test_progress_reads_the_last_logged_step(tmp_path):
    from hglv2.benchmark import _last_step

    assert _last_step(str(tmp_path)) == 0  # no log yet
    log = tmp_path / "log.jsonl"
    log.write_text("".join(f'{{"step": {s}, "loss": 0.5}}\n' for s in range(1, 2000)) + '{"step": 20')
    assert _last_step(str(tmp_path)) == 1999  # a line being written is skipped


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminal")
def test_parallel_benchmark_shows_one_progress_bar_in_a_terminal(tmp_path):
    """Parallel runs in a terminal: one overall bar (runs done, steps), not minutes of silence."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    suite = tmp_path / "suite.yaml"
    write_tiny_suite(suite, tmp_path / "data", "tty", checkpoint_every=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hglv2.cli", "benchmark", str(suite), "--out", str(tmp_path / "b")]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm reads the width
    proc = subprocess.Popen(
        [*cmd, "--jobs", "2"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=slave
    )
    os.close(slave)
    chunks = []
    try:
        deadline = time.monotonic() + 280
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert rc == 0, err
    frames = [f for f in err.replace("\n", "\r").split("\r") if f.startswith("benchmark:")]
    assert frames, err
    assert "2/2" in frames[-1] and "run" in frames[-1], frames[-1]  # runs done / runs planned


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_stop_pool_leaves_no_worker_and_no_manager_thread():
    """stop_pool stops the workers of a busy pool and waits for the pool's manager thread, so
    that the interpreter's exit hook finds its wake-up pipe closed rather than closing."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from hglv2.processes import stop_pool

    pool = ProcessPoolExecutor(2, mp_context=get_context("spawn"))
    futures = [pool.submit(_sleep, 30.0) for _ in range(4)]
    deadline = time.monotonic() + 60
    while not any(f.running() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = list(pool._processes.values())
    manager, wakeup = pool._executor_manager_thread, pool._executor_manager_thread_wakeup
    assert workers and manager is not None and manager.is_alive()
    t0 = time.monotonic()
    stop_pool(pool, grace_s=5.0)
    assert time.monotonic() - t0 < 15
    assert not any(p.is_alive() for p in workers)
    assert not manager.is_alive() and wakeup._closed
    assert all(f.done() for f in futures)
