"""Child processes that never outlive the derma process that started them.

A process killed with SIGKILL runs no cleanup, so its children must notice by themselves:

- :func:`die_with_parent` asks Linux to send the caller a signal when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``, through ctypes) and, on every platform, starts a watchdog thread
  that exits the process once a given ancestor (derma's main process) is gone. Both are needed:
  a forkserver's workers are children of the forkserver, not of derma's main process, and
  ``PR_SET_PDEATHSIG`` only sees the direct parent.
- :func:`popen_kwargs` is what a ``subprocess`` call passes so the child gets the same signal
  (the setting survives ``exec``); used for the ``derma ui`` server.

SIGTERM unwinds like Ctrl-C (:class:`Terminated`); :func:`interrupt_exit_code` gives 130 or 143.

A run whose process was killed without ending it stays RUNNING in the store: :func:`liveness`
tells such a run (its process gone) from one still running, :func:`end_stale` ends them as
KILLED (``derma runs --end-stale``), and :func:`resume_config` gives what ``derma run --resume``
continues one with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
#: Seconds between the watchdog's checks that the ancestor is still alive.
WATCH_INTERVAL = 0.5


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Linux: deliver ``sig`` to this process when its parent dies. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc / no prctl
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # Linux: a zombie has exited already
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_start(pid: int) -> str | None:
    """Linux: when process ``pid`` started (clock ticks since boot, as text); None elsewhere or
    when it does not exist. A pid with a different start time is another process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


def _watch(pid: int, parent: int) -> None:
    while True:
        time.sleep(WATCH_INTERVAL)
        if os.getppid() != parent or not pid_alive(pid):
            os._exit(1)  # the work of a dead parent has no one to report to


def die_with_parent(ancestor_pid: int | None = None) -> None:
    """Make the calling (child) process exit when its parent or ``ancestor_pid`` dies.

    Use as a ``ProcessPoolExecutor``/``multiprocessing`` initializer with ``initargs=(os.getpid(),)``
    from the main process."""
    set_parent_death_signal(signal.SIGTERM)
    parent = os.getppid()
    target = ancestor_pid or parent
    if not pid_alive(target):  # it died before we got here
        os._exit(1)
    threading.Thread(target=_watch, args=(target, parent), name="derma-parent-watchdog", daemon=True).start()


def popen_kwargs() -> dict:
    """Keyword arguments for ``subprocess.Popen``/``call`` so the child dies with this process."""
    if not sys.platform.startswith("linux"):
        return {}
    return {"preexec_fn": lambda: set_parent_death_signal(signal.SIGTERM)}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process gets SIGTERM (a cluster scheduler's or
    ``docker stop``'s request to stop): it unwinds like Ctrl-C, so a run is ended KILLED with
    its checkpoint kept, and derma exits 143 (128 + SIGTERM)."""

    exit_code = 128 + signal.SIGTERM
    reason = "terminated (SIGTERM)"


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in the main thread (once; later calls do nothing)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    owner = os.getpid()

    def handler(signum, frame):  # noqa: ARG001
        if os.getpid() != owner:  # a forked worker inherited the handler: just stop
            os._exit(128 + signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise Terminated()

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, handler)


def interrupt_exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return getattr(exc, "exit_code", 130)


def interrupt_reason(exc: BaseException) -> str:
    return getattr(exc, "reason", "interrupted (Ctrl-C)")


# -- runs whose process is gone ---------------------------------------------------------------
# Every run records the pid, process start time, host and folder of the process that runs it
# (tracking's TAG_PID, TAG_PROCESS_START, TAG_HOST, TAG_CWD); a RUNNING run whose process no
# longer exists on this host was killed without a chance to end it (`derma runs --end-stale`).

ALIVE = "running"
GONE = "process gone"
ELSEWHERE = "on another host"
UNKNOWN = "no process recorded"


def liveness(run) -> str:
    """For a RUNNING run: :data:`ALIVE`, :data:`GONE`, :data:`ELSEWHERE` or :data:`UNKNOWN`."""
    from . import tracking

    tags = run.data.tags
    pid, host = tags.get(tracking.TAG_PID, ""), tags.get(tracking.TAG_HOST)
    if not pid.isdigit() or not host:
        return UNKNOWN
    if host != socket.gethostname():
        return ELSEWHERE
    if not pid_alive(int(pid)):
        return GONE
    started = tags.get(tracking.TAG_PROCESS_START)
    if started and process_start(int(pid)) not in (None, started):
        return GONE  # the pid now belongs to another process
    return ALIVE


def stale_runs(uri: str | None = None, experiment: str | None = None) -> list:
    """RUNNING runs whose process on this host is gone."""
    from . import tracking

    return [r for r in tracking.list_runs(uri, experiment, status="RUNNING") if liveness(r) == GONE]


def end_stale(uri: str | None = None, experiment: str | None = None) -> list[str]:
    """End every stale run as KILLED with the reason; returns their ids."""
    from . import tracking

    ended = []
    for run in stale_runs(uri, experiment):
        tags = run.data.tags
        reason = (f"killed: process {tags.get(tracking.TAG_PID)} on {tags.get(tracking.TAG_HOST)} ended without "
                  "ending the run (found by `derma runs --end-stale`); results are partial, "
                  f"`derma run --resume {run.info.run_id}` continues it")
        tracking.end_run(run.info.run_id, "KILLED", reason, uri)
        ended.append(run.info.run_id)
    return ended


class ResumeError(LookupError):
    """A run cannot be resumed (unknown, or still running); the message says what to do."""


def resume_config(run_id: str, uri: str | None = None, re_evaluate: bool = False):
    """``(stored config, run)`` to resume ``run_id`` with, or ``(None, run)`` when the run is
    FINISHED and ``re_evaluate`` is not set (nothing to do).

    Relative paths in the stored config (``data.dir``, ``output.work_dir``, a checkpoint...) are
    resolved against the folder the run was started in (tag ``derma.cwd``), so ``--resume`` from
    another folder finds the run's checkpoint and data, not the current folder's."""
    from pathlib import Path

    from . import tracking

    try:
        run = tracking.get_run(run_id, uri)
    except Exception:  # MlflowException: no such run (or a malformed id)
        raise ResumeError(f"no run {run_id!r} in {tracking.resolve_tracking_uri(uri)}; pass --tracking-uri "
                          "(or set MLFLOW_TRACKING_URI) to the store it was logged to") from None
    if run.info.status == "FINISHED" and not re_evaluate:
        return None, run
    if run.info.status == "RUNNING" and liveness(run) == ALIVE:
        tags = run.data.tags
        raise ResumeError(f"run {run_id} is still running (pid {tags.get(tracking.TAG_PID)} on "
                          f"{tags.get(tracking.TAG_HOST)}); wait for it to end or stop that process first")
    stored = tracking.load_run_config(run_id, uri)
    base = run.data.tags.get(tracking.TAG_CWD)
    if base and Path(base).resolve() != Path.cwd().resolve():
        stored = _rebase(stored, Path(base))
    return stored, run


def _rebase(node, base):
    """Relative path strings that exist under ``base`` become absolute paths there."""
    from pathlib import Path

    if isinstance(node, dict):
        return {k: _rebase(v, base) for k, v in node.items()}
    if isinstance(node, str) and node and not Path(node).is_absolute() and (base / node).exists():
        return str((base / node).resolve())
    return node
