"""Progress bars that read well both on a terminal and in a log file.

On a terminal (or in a notebook) :func:`progress` is tqdm's bar, redrawn in place. Anywhere
else (``derma run ... > log.txt 2>&1``, a pipe, CI, a cluster scheduler's log) redraws would
fill the file with carriage returns and padding, so the bar becomes :class:`LineProgress`: whole
lines, one when the loop ends (a line per epoch for an epoch's bar) and, for a long loop, one
every :data:`LINE_STEP` percent at most every :data:`LINE_INTERVAL` seconds. Every progress bar
derma and its plugins draw goes through :func:`progress` (plugins through ``ctx.progress``).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

from tqdm import tqdm as _std_tqdm

#: Off a terminal, a line at most every this many percent of a loop...
LINE_STEP = 10
#: ...and at most every this many seconds (a loop shorter than this writes one line, at its end).
LINE_INTERVAL = 30.0
#: Off a terminal, the line's layout: no bar, no padding.
LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
#: ...and when the loop's length is unknown.
LINE_FORMAT_OPEN = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class LineProgress(_std_tqdm):
    """tqdm that writes whole lines instead of redrawing one (see the module's docstring); the
    rest of tqdm's interface (``update``, ``set_postfix``, ``write``, ``close``, context manager)
    is unchanged."""

    def __init__(self, *args: Any, line_step: float = LINE_STEP, line_interval: float = LINE_INTERVAL,
                 **kwargs: Any) -> None:
        self._line_step = float(line_step)
        self._line_interval = float(line_interval)
        self._line_n = 0  # n when the last line was written
        self._line_t = time.monotonic()
        own_format = "bar_format" not in kwargs
        kwargs["leave"] = False  # the last line is written by display(); tqdm would redraw it
        kwargs.pop("dynamic_ncols", None)
        kwargs.setdefault("mininterval", 1.0)
        super().__init__(*args, **kwargs)
        if own_format:
            self.bar_format = LINE_FORMAT if self.total else LINE_FORMAT_OPEN

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write a line when due; ``msg == ""`` is tqdm clearing the bar as it closes: the
        closing line, unless the last line already said where the loop ended."""
        closing = msg == ""
        if msg not in (None, ""):  # a message of its own (tqdm's "more hidden" marker): as a line
            self._write_line(msg)
            return False
        if self.n == self._line_n and (closing or self.n == 0):
            return False
        finished = self.total is not None and self.n >= self.total
        if closing or finished or self._due():
            self._write_line(self.__str__())
        return False  # nothing to clear: tqdm then writes no "\r"

    def _due(self) -> bool:
        if time.monotonic() - self._line_t < self._line_interval:
            return False
        if not self.total:
            return True
        return (self.n - self._line_n) * 100.0 / self.total >= self._line_step

    def _write_line(self, text: str) -> None:
        self._line_n, self._line_t = self.n, time.monotonic()
        fp = self.fp
        fp.write(text.rstrip() + "\n")
        getattr(fp, "flush", lambda: None)()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", *,
             disable: bool = False, file: Any = None, **kwargs: Any):
    """A progress bar over ``iterable`` (or updated by hand up to ``total``): tqdm's on a
    terminal or in a notebook, :class:`LineProgress` elsewhere; ``disable`` draws nothing.
    Other keywords go to tqdm."""
    from tqdm.auto import tqdm as auto_tqdm
    from tqdm.autonotebook import tqdm as notebook_tqdm  # tqdm's own bar unless in a notebook

    stream = sys.stderr if file is None else file
    if notebook_tqdm is not _std_tqdm or _is_terminal(stream):  # a notebook widget, or a terminal
        return auto_tqdm(iterable, total=total, desc=desc, disable=disable, file=file, **kwargs)
    return LineProgress(iterable, total=total, desc=desc, disable=disable, file=stream, **kwargs)


def quiet_library_bars(quiet: bool = False, stream: Any = None) -> None:
    """Turn off the Hugging Face libraries' own progress bars (transformers' "Loading weights",
    huggingface_hub's downloads) when ``quiet`` or off a terminal: they redraw in place, which a
    log file keeps as carriage returns, and derma's own lines already say what is running. Sets
    ``HF_HUB_DISABLE_PROGRESS_BARS=1`` unless it is set (both libraries read it when first
    imported), and turns the bars off in the libraries already imported. Call before a run."""
    import os

    if not quiet and (_is_terminal(sys.stderr if stream is None else stream)
                      or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None):
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
