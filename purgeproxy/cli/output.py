"""How commands print: rich bars and tables on a terminal, plain lines when piped or logged, one
JSON document with ``--json``.

Plain text off a terminal, because a CI log or ``| grep`` gets nothing from redrawn bars and
colour codes; JSON for scripts, printed once at the end so that it is always one valid document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


class Output:
    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.console = Console(file=sys.stdout)
        self.fancy = self.console.is_terminal and not as_json

    def line(self, text: str) -> None:
        if self.fancy:
            self.console.print(text, highlight=False, markup=False)
        elif not self.as_json:
            print(text, flush=True)

    def error(self, text: str) -> None:
        print(f"purgeproxy: {text}", file=sys.stderr, flush=True)

    def json(self, document: Any) -> None:
        print(json.dumps(document, indent=2, default=str), flush=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [["" if value is None else str(value) for value in row] for row in rows]
        if self.fancy:
            table = Table(title=title)
            for column in columns:
                table.add_column(column)
            for row in cells:
                table.add_row(*row)
            self.console.print(table)
            return
        widths = [max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)]
        print(title)
        for row in [list(columns), *cells]:
            print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
        sys.stdout.flush()

    def progress(self, names: Sequence[str]) -> ProgressView:
        return ProgressView(self, names)


class ProgressView:
    """A bar per item (resources removed of those in scope) and one overall (items finished).
    Off a terminal each item's state is printed as a line when it changes; with ``--json``,
    nothing is printed until the end."""

    def __init__(self, output: Output, names: Sequence[str]) -> None:
        self.output, self.names = output, list(names)
        self.last: dict[str, str] = {}
        self.finished = 0
        self.bars: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressView:
        if self.output.fancy:
            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
                                 console=self.output.console)
            self.overall = self.bars.add_task("overall", total=len(self.names), state="patients done")
            self.tasks = {name: self.bars.add_task(name, total=None, state="waiting") for name in self.names}
            self.bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.bars is not None:
            self.bars.stop()

    def update(self, name: str, state: str, done: int | None = None, total: int | None = None) -> None:
        if self.bars is not None:
            self.bars.update(self.tasks[name], completed=done or 0, total=total, state=state)
            return
        text = state if total is None or f"{done} of {total}" in state else f"{state} ({done} of {total})"
        if self.last.get(name) != text:
            self.last[name] = text
            self.output.line(f"{name}: {text}")

    def finish(self, name: str, verdict: str, done: int | None = None) -> None:
        self.finished += 1
        if self.bars is not None:
            task = self.bars.tasks[self.tasks[name]]
            final = done if done is not None else task.completed
            self.bars.update(self.tasks[name], completed=final, total=max(final, task.total or 0) or 1,
                             state=verdict)
            self.bars.update(self.overall, completed=self.finished)
            return
        self.output.line(f"{name}: {verdict} [{self.finished}/{len(self.names)} done]")
