"""Child processes that never outlive the derma process that started them.

A process killed with SIGKILL runs no cleanup, so its children must notice by themselves:

- :func:`die_with_parent` asks Linux to send the caller a signal when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``, through ctypes) and, on every platform, starts a watchdog thread
  that exits the process once a given ancestor (derma's main process) is gone. Both are needed:
  a forkserver's workers are children of the forkserver, not of derma's main process, and
  ``PR_SET_PDEATHSIG`` only sees the direct parent.
- :func:`popen_kwargs` is what a ``subprocess`` call passes so the child gets the same signal
  (the setting survives ``exec``); used for the ``derma ui`` server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
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

