"""Child-process hygiene: every process hglv2 starts dies with the process that started it.

* :func:`die_with_parent` runs in the child (e.g. as a ``ProcessPoolExecutor`` initializer): on
  Linux it asks the kernel for a signal when the parent dies (``prctl(PR_SET_PDEATHSIG)``, which
  also covers ``kill -9`` of the parent), and everywhere it starts a daemon thread that polls the
  parent id and exits when the child has been re-parented (the fallback where ``prctl`` is
  missing, and a guard against the parent having died before the call).
* :func:`stop_processes` runs in the parent when it unwinds (Ctrl-C, SIGTERM, an error in one
  run): SIGTERM to each child, then SIGKILL to those still alive after a grace period;
  :func:`stop_pool` does it for a ``ProcessPoolExecutor`` and waits for the pool's own thread.
* :func:`usable_cores` counts the cores a default number of processes or threads is made of.
* :func:`fork_children` runs in a spawned child that starts processes of its own (a training run's
  DataLoader workers): they are forked, as in a process started from the command line on Linux.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int | None = None, poll_s: float = 0.5, ignore_sigint: bool = True) -> None:
    """Make this (child) process exit when ``parent_pid`` (default: the current parent) dies.

    ``ignore_sigint``: leave Ctrl-C to the parent, which stops its children itself (a terminal
    sends SIGINT to the whole foreground process group).
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    if ignore_sigint:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="hglv2-parent-watch", daemon=True).start()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one, else
    the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fork_children() -> None:
    """Make ``fork`` this process's default start method on Linux.

    A process started by ``spawn`` inherits ``spawn`` as its default, so each DataLoader it builds
    would start its workers as fresh interpreters that import torch and hglv2 again (seconds per
    loader, several loaders per training run); a process started from the command line on Linux
    (``hglv2 train``, a rank under torchrun) forks them.
    """
    import multiprocessing

    if sys.platform.startswith("linux"):
        multiprocessing.set_start_method("fork", force=True)


def stop_pool(pool: Any, grace_s: float = 3.0) -> None:
    """Stop a ``concurrent.futures.ProcessPoolExecutor``: cancel the work not started, stop its
    workers (:func:`stop_processes`), then wait for its manager thread, which notices them gone
    and closes the pool's pipes. Waiting matters at exit: the interpreter's exit hook of
    ``concurrent.futures`` writes to the wake-up pipe of every manager thread still registered, and
    one that is closing that pipe at the same moment makes it print an ``OSError`` traceback."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)  # both are dropped by shutdown
    pool.shutdown(wait=False, cancel_futures=True)
    stop_processes(processes, grace_s)
    if manager is not None:
        manager.join(grace_s)


def stop_processes(processes: Iterable[Any], grace_s: float = 3.0) -> None:
    """SIGTERM each ``multiprocessing.Process`` still alive, then SIGKILL after ``grace_s``."""
    procs = [p for p in processes if p is not None]
    for p in procs:
        with contextlib.suppress(Exception):
            if p.is_alive():
                p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        with contextlib.suppress(Exception):
            if p.is_alive():
                p.kill()
                p.join(1.0)
