"""Messages and progress on stderr; results (one JSON object per line) on stdout.

stdout carries nothing but `--json` records, so `percept depth ... --json | jq` always parses.
Progress bars appear only when stderr is a terminal and --quiet is not given; notes are
silenced by --quiet; warnings and errors always print. rich is imported when a bar starts.
Libraries speak only through percept: `library_chatter_off` keeps diffusers' log lines, bars and
Python warnings off stderr while it loads or builds something for us (failures are raised and
reported as percept's own one-line errors).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class Console:
    """The one place that writes for people (stderr) and for programs (stdout)."""

    def __init__(self, quiet: bool = False, prefix: str = "") -> None:
        self.quiet = quiet
        self.prefix = prefix  # "[rank 1/4] " under torchrun, so interleaved lines stay attributable
        self._live = None  # the rich Progress while a bar is shown; messages go through it
        self._warned: set[str] = set()

    # -- stderr -----------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def note(self, msg: str) -> None:
        """Progress-like information for people; silenced by --quiet."""
        if not self.quiet:
            self._say(f"{self.prefix}{msg}")

    def warn(self, msg: str) -> None:
        """Something the user may want to change; always shown, once per run."""
        if msg not in self._warned:
            self._warned.add(msg)
            self._say(f"{self.prefix}warning: {msg}")

    def error(self, msg: str) -> None:
        """One failed input (the batch goes on) or the final failure; always shown."""
        self._say(f"{self.prefix}error: {msg}")

    # -- stdout -----------------------------------------------------------------------------------

    @staticmethod
    def record(obj: dict[str, Any]) -> None:
        """One JSON object on one line of stdout, written in one call so parallel ranks do not interleave."""
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    # -- progress ---------------------------------------------------------------------------------

    @contextmanager
    def progress(self, total: int | None, what: str = "inputs") -> Iterator["Tracker"]:
        """A bar of inputs done / total, and one of denoising steps while a chunk runs."""
        if self.quiet or not sys.stderr.isatty():
            yield Tracker(None)
            return
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=RichConsole(stderr=True), transient=False,
        )
        with bar:
            self._live = bar
            try:
                yield Tracker(bar, bar.add_task(f"{self.prefix}{what}", total=total))
            finally:
                self._live = None


@contextmanager
def library_chatter_off() -> Iterator[None]:
    """Within the block: no diffusers (or transformers) log lines or progress bars, no Python warnings.

    diffusers logs on every model load (e.g. a multi-line note that `accelerate` is not installed,
    even under --quiet) and warns instead of failing on some bad checkpoints; callers turn what
    matters into errors themselves. The previous levels and filters are restored on exit.
    """
    import logging
    import warnings

    if "diffusers" not in sys.modules:  # loading percept's own folders never imports diffusers: keep it so
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
        return
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled()
    others = [logging.getLogger(name) for name in ("transformers",) if name in sys.modules]
    levels = [logger.level for logger in others]
    diffusers_logging.set_verbosity(logging.CRITICAL + 1)  # above every level: nothing passes
    diffusers_logging.disable_progress_bar()
    for logger in others:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if bars:
            diffusers_logging.enable_progress_bar()
        for logger, level in zip(others, levels):
            logger.setLevel(level)

class Tracker:
    """Advances the bars; a no-op when progress is off."""

    def __init__(self, bar, task_id=None) -> None:
        self.bar = bar
        self.task_id = task_id
        self._steps = None

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.task_id, n)

    def steps(self, total_rows: int) -> Callable[[int], None] | None:
        """An on_step callback for Predictor.predict_iter over `total_rows` denoising row-steps."""
        if self.bar is None:
            return None
        if self._steps is None:
            self._steps = self.bar.add_task("  denoising", total=total_rows)
        else:
            self.bar.reset(self._steps, total=total_rows)
        return lambda rows: self.bar.advance(self._steps, rows)


def print_eval_table(res: dict[str, Any]) -> None:
    """A results table on stdout: the model's mean metrics with each baseline beside it."""
    from rich.console import Console as RichConsole
    from rich.table import Table

    rows = {"model": res["scores"], **res.get("baselines", {})}
    keys = list(res["scores"])
    table = Table(title=f"{res['task']} on {res['data']}: {res['count']} samples, model {res['model']}, "
                        f"{res['settings']['steps']} steps x {res['settings']['ensemble']} members")
    table.add_column("predictor")
    for k in keys:
        table.add_column(k, justify="right")
    for name, scores in rows.items():
        table.add_row(name, *(f"{scores[k]:.4f}" for k in keys))
    RichConsole().print(table)
