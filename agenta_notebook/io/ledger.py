"""The spend ledger: what every finished traced cell cost, in a local SQLite file.

Every ``%%agenta_trace`` cell, once it has ended, appends rows to the ledger (by default
``ledger.sqlite3`` in `platformdirs.user_data_dir("agenta-notebook")`; `set_ledger` and
the environment variable ``AGENTA_NOTEBOOK_LEDGER`` move it or turn it off, see
`agenta_notebook.runtime.Ledger`). Only figures are written, never a prompt or an output:

- one row for the cell (``model`` is NULL): the trace's totals;
- one row per model the cell called (`TraceTree.by_model()`).

The cell's row also holds its budget, if it had one (`trace(budget=, max_tokens=)`,
``--budget``): the dollars (exact TEXT), the tokens, and whether it was reached and
whether a request was refused (0/1); NULL without a budget, and on the model rows. A
ledger file written before these columns existed gets them the next time it is written
(its rows kept, NULL there), and is read with NULL in their place until then.

Rows rather than a JSON column of models: the ledger stays queryable with plain SQL
(``GROUP BY model``), and the cell's row carries what no model row does (its errors).
Every figure is a column; a cost is exact decimal TEXT (a float would not add up to
the traces' totals), NULL when nothing of it was priced; tokens are NULL when unknown.

Writing is off the cell's path: the cell only queues its trace (`record`, a few
microseconds); one daemon thread per process (`LedgerWriter`) looks at the queue four
times a second, builds the rows and writes them in one transaction per batch, in WAL
mode with a busy timeout, so several kernels write the same file at once. A ledger that
cannot be written (a read-only file or folder, a lock held longer than the timeout)
warns once per file (`UserWarning`, with the path) and the cell is unaffected: the rows
of that batch are dropped, and later cells keep trying quietly (a file that becomes
writable again is written again). The queue is flushed at
exit (`atexit`) and before every read (`spend_dataframe`).
"""

from __future__ import annotations

import atexit
import html
import os
import re
import sqlite3
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

import pandas as pd

from agenta_notebook import forksafe
from agenta_notebook.budget import trace_budget
from agenta_notebook.core.fields import COST_CONTEXT
from agenta_notebook.errors import internal_error
from agenta_notebook.live import Trace
from agenta_notebook.runtime import ledger_file, ledger_path

__all__ = [
    "BUSY_TIMEOUT",
    "GROUPINGS",
    "POLL_SECONDS",
    "WRITER",
    "LedgerWriter",
    "flush",
    "grouping",
    "notebook_path",
    "parse_since",
    "record",
    "spend_dataframe",
    "spend_html",
]

#: Seconds a write waits for another process's transaction before it gives up.
BUSY_TIMEOUT: Final = 10.0
#: At exit, how long (seconds) the rows still queued are waited for.
EXIT_WAIT: Final = 10.0
#: How often (seconds) the writer thread looks at the queue, when no flush asks it to.
POLL_SECONDS: Final = 0.25
#: A cell is written once its trace has no running span and the shell is idle (its rows
#: are built from the whole trace, off the next cell's time), or after this many seconds
#: (spans that never end, a "run all" of many cells).
MAX_WAIT: Final = 60.0
#: Cells queued and not yet written, at most (beyond: dropped, with one warning).
MAX_PENDING: Final = 10_000
#: How `spend_dataframe` and ``%agenta_spend`` can group the cells.
GROUPINGS: Final = ("model", "notebook", "day")

Grouping = Literal["model", "notebook", "day"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS spend (
    ended_at REAL NOT NULL,
    notebook TEXT,
    cell_id TEXT,
    execution_count INTEGER,
    trace_name TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    model TEXT,
    calls INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    total_tokens INTEGER,
    cost TEXT,
    unpriced_calls INTEGER NOT NULL,
    errors INTEGER,
    budget TEXT,
    max_tokens INTEGER,
    budget_reached INTEGER,
    budget_refused INTEGER
);
CREATE INDEX IF NOT EXISTS spend_ended_at ON spend (ended_at);
"""
#: Columns added since the first schema, with their type: a ledger file written before
#: them gets them (`ALTER TABLE ... ADD COLUMN`, its rows kept, NULL there) when it is
#: next written, and is read with NULL in their place until then.
_ADDED: Final = (
    ("budget", "TEXT"),
    ("max_tokens", "INTEGER"),
    ("budget_reached", "INTEGER"),
    ("budget_refused", "INTEGER"),
)
_COLUMN_NAMES: Final = (
    "ended_at",
    "notebook",
    "cell_id",
    "execution_count",
    "trace_name",
    "trace_id",
    "model",
    "calls",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost",
    "unpriced_calls",
    "errors",
    *(name for name, _ in _ADDED),
)
_COLUMNS: Final = ", ".join(_COLUMN_NAMES)
_INSERT: Final = f"INSERT INTO spend ({_COLUMNS}) VALUES ({', '.join('?' * len(_COLUMN_NAMES))})"


class CellSpend(NamedTuple):
    """A finished cell waiting to be written: its trace and where it ran."""

    path: Path
    trace: Trace
    ended_at: float
    notebook: str | None
    cell_id: str | None
    execution_count: int | None
    #: `time.monotonic()` when it was queued
    queued: float = 0.0


def _text(cost: Decimal | None) -> str | None:
    return None if cost is None else format(cost, "f")


def rows_of(cell: CellSpend) -> list[tuple[Any, ...]]:
    """The ledger rows of one cell: its totals, then one per model (no prompt, no output)."""
    # totals, models and budget only: the spans that count are enough (no node for a
    # span that states nothing, in a big trace most of them)
    tree = cell.trace.counted_tree()
    totals = tree.totals
    where = (
        cell.ended_at,
        cell.notebook,
        cell.cell_id,
        cell.execution_count,
        cell.trace.name,
        f"{cell.trace.trace_id:032x}",
    )
    budget = trace_budget(tree)
    limits: tuple[Any, ...] = (
        (None, None, None, None)
        if budget is None
        else (_text(budget.dollars), budget.max_tokens, int(budget.reached), int(budget.refused))
    )
    rows: list[tuple[Any, ...]] = [
        (
            *where,
            None,
            totals.model_calls,
            totals.input_tokens,
            totals.output_tokens,
            totals.total_tokens,
            _text(totals.cost),
            totals.unpriced_calls,
            totals.errors,
            *limits,
        )
    ]
    for model in tree.by_model():
        rows.append(
            (
                *where,
                model.model,
                model.calls,
                model.input_tokens,
                model.output_tokens,
                model.total_tokens,
                _text(model.cost),
                model.unpriced_calls,
                None,
                None,
                None,
                None,
                None,
            )
        )
    return rows


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    else:
        connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=rw", timeout=BUSY_TIMEOUT, uri=True
        )
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        if create:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.executescript(_SCHEMA)
            _migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _present(connection: sqlite3.Connection) -> set[str]:
    """The columns the file's `spend` table has."""
    return {row[1] for row in connection.execute("PRAGMA table_info(spend)")}


def _migrate(connection: sqlite3.Connection) -> None:
    """Add the columns of `_ADDED` that a ledger written by an older version lacks (its
    rows are kept). Several kernels may open the file at once: one transaction each, and
    a column another one added meanwhile is not added twice."""
    if all(name in _present(connection) for name, _ in _ADDED):
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        present = _present(connection)
        for name, kind in _ADDED:
            if name not in present:
                connection.execute(f"ALTER TABLE spend ADD COLUMN {name} {kind}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class LedgerWriter:
    """The one thread of a process that writes the ledger, and the queue it reads.

    `record` appends to a deque and returns: it wakes nothing (waking a thread costs the
    cell a switch of the GIL, ~0.2 ms), so the cell never waits for SQLite nor for the
    writer. The thread looks at the queue every `POLL_SECONDS`, or at once when asked
    to `flush`, and writes what it finds in one transaction per ledger file. It starts
    on the first row and lives as long as the process (a daemon, flushed at exit). It
    keeps one connection per ledger file, used by it alone.
    """

    def __init__(self) -> None:
        self._setup()
        self._exit_hook = False
        self._connections: dict[Path, sqlite3.Connection] = {}
        #: a forked child's copies of the parent's connections: never used nor closed
        #: there (SQLite must not touch a connection across a fork)
        self._inherited: list[sqlite3.Connection] = []
        self._warned: set[Path] = set()
        self._dropped_warned = False
        #: the cells written, and those dropped (a full queue, a file not writable)
        self.written = 0
        self.dropped = 0
        forksafe.register(self.after_fork)

    def _setup(self) -> None:
        #: guards `_busy`, `_thread` and the flushes' waits
        self._changed = threading.Condition(forksafe.new_lock())
        #: set to make the writer look at the queue now (a flush)
        self._wake = threading.Event()
        #: appended by the cells without a lock (a deque's append is atomic)
        self._pending: deque[CellSpend] = deque()
        self._busy = False
        self._thread: threading.Thread | None = None
        #: set while no cell of the shell runs (the writer waits for it: `MAX_WAIT`)
        self._idle = threading.Event()
        self._idle.set()

    def shell_busy(self) -> None:
        """A cell started (the magic's `pre_run_cell`): hold the writes."""
        self._idle.clear()

    def shell_idle(self) -> None:
        """A cell ended (the magic's `post_run_cell`)."""
        self._idle.set()

    def after_fork(self) -> None:
        """In a forked child: no writer thread, none of the parent's cells to write."""
        self._setup()
        self._inherited.extend(self._connections.values())
        self._connections = {}

    def record(self, cell: CellSpend) -> bool:
        """Queue `cell` for the writer thread; False if the queue is full (dropped)."""
        pending = self._pending
        if len(pending) < MAX_PENDING:
            pending.append(cell)
            if self._thread is None:
                with self._changed:
                    if self._thread is None:
                        self._start()
            return True
        with self._changed:
            self.dropped += 1
            warn, self._dropped_warned = not self._dropped_warned, True
        if warn:
            warnings.warn(
                f"agenta_notebook: the spend ledger's writer is {MAX_PENDING:,} cells "
                f"behind ({cell.path}); the spend of newer cells is not recorded until "
                "it catches up. Your cells are not affected.",
                UserWarning,
                stacklevel=2,
            )
        return False

    def _start(self) -> None:
        # Under the lock.
        thread = threading.Thread(target=self._work, name="agenta_notebook-ledger", daemon=True)
        self._thread = thread
        if not self._exit_hook:
            self._exit_hook = True
            atexit.register(self.flush, EXIT_WAIT)
        thread.start()

    def flush(self, timeout: float = EXIT_WAIT) -> bool:
        """Wait until every queued cell is written; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (self._pending or self._busy) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._changed.wait(min(left, POLL_SECONDS))
        return True

    def _ready(self, forced: bool) -> list[CellSpend]:
        """The queued cells to write now (under the lock): all of them on a flush; else
        those whose trace is complete, once the shell is idle; or those waiting for
        `MAX_WAIT` seconds."""
        pending = self._pending
        now = time.monotonic()
        if forced:
            return [pending.popleft() for _ in range(len(pending))]
        if not self._idle.is_set() and now - pending[0].queued < MAX_WAIT:
            return []
        ready: list[CellSpend] = []
        waiting: list[CellSpend] = []
        for _ in range(len(pending)):  # cells queued meanwhile stay after these
            cell = pending.popleft()
            late = now - cell.queued >= MAX_WAIT
            (ready if late or not cell.trace.running else waiting).append(cell)
        pending.extendleft(reversed(waiting))
        return ready

    def _work(self) -> None:
        pending, wake = self._pending, self._wake
        while True:
            wake.wait(POLL_SECONDS)
            forced = wake.is_set()
            wake.clear()
            with self._changed:
                batch = self._ready(forced) if pending else []
                if not batch:
                    self._changed.notify_all()
                    continue
                self._busy = True
            try:
                self._write(batch)
            except BaseException:  # only under the test suite (`internal_error` raises)
                with self._changed:
                    self._busy = False
                    self._thread = None
                    self._changed.notify_all()
                raise
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    def _write(self, batch: list[CellSpend]) -> None:
        by_path: dict[Path, list[CellSpend]] = {}
        for cell in batch:
            by_path.setdefault(cell.path, []).append(cell)
        for path, cells in by_path.items():
            rows: list[tuple[Any, ...]] = []
            for cell in cells:
                try:
                    rows.extend(rows_of(cell))
                except Exception:  # that cell's rows are lost; the others are written
                    internal_error("reading a cell's totals for the spend ledger")
            try:
                self._insert(path, rows)
            except Exception as error:  # any failure to write: warned once, rows dropped
                with self._changed:
                    self.dropped += len(cells)
                self._cannot_write(path, error)
            else:
                with self._changed:
                    self.written += len(cells)

    def _insert(self, path: Path, rows: Sequence[tuple[Any, ...]]) -> None:
        connection = self._connections.get(path)
        if connection is None:
            connection = self._connections[path] = _connect(path, create=True)
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(_INSERT, rows)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except Exception:
            # Opened again for the next batch: the file may be writable by then.
            self._connections.pop(path, None)
            connection.close()
            raise

    def _cannot_write(self, path: Path, error: BaseException) -> None:
        if path in self._warned:
            return
        self._warned.add(path)
        warnings.warn(
            f"agenta_notebook: cannot write the spend ledger {path} ({error}). Your cells "
            "are not affected; their spend is not recorded there (later cells keep trying). "
            "Move it with agenta_notebook.set_ledger(path=...) or turn it off with "
            "set_ledger(enabled=False) or AGENTA_NOTEBOOK_LEDGER=off.",
            UserWarning,
            stacklevel=1,
        )


#: The process's writer.
WRITER: Final = LedgerWriter()


def record(
    trace: Trace,
    *,
    notebook: str | None = None,
    cell_id: str | None = None,
    execution_count: int | None = None,
    ended_at: float | None = None,
) -> bool:
    """Queue the spend of a finished traced cell for the ledger (a no-op when it is off).

    Cheap: the rows are built and written by the writer thread. True if queued.
    """
    path = ledger_path()
    if path is None:
        return False
    cell = CellSpend(
        path=path,
        trace=trace,
        ended_at=time.time() if ended_at is None else ended_at,
        notebook=notebook,
        cell_id=cell_id,
        execution_count=execution_count,
        queued=time.monotonic(),
    )
    return WRITER.record(cell)


def flush(timeout: float = EXIT_WAIT) -> bool:
    """Wait until every queued cell is written to the ledger; False on `timeout`."""
    return WRITER.flush(timeout)


def notebook_path(shell: Any) -> str | None:
    """The notebook a kernel runs, when its frontend says: VS Code's
    ``__vsc_ipynb_file__``, Jupyter's ``__session__`` or ``JPY_SESSION_NAME``."""
    namespace = getattr(shell, "user_ns", None) or {}
    for name in ("__vsc_ipynb_file__", "__session__"):
        value = namespace.get(name)
        if isinstance(value, str) and value:
            return value
    return os.environ.get("JPY_SESSION_NAME") or None


# -- reading ---------------------------------------------------------------------------------

_AGO: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", re.IGNORECASE)
_UNIT_SECONDS: Final = {"m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}

Since = str | datetime | date | timedelta | None


def parse_since(since: Since, now: float | None = None) -> float | None:
    """The start, in Unix seconds, of ``since``: ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"``
    ago, a date or time (``"2026-11-01"``, local time unless it says otherwise), a
    `datetime`, `date` or `timedelta`; None for everything. ValueError otherwise."""
    now = time.time() if now is None else now
    if since is None:
        return None
    if isinstance(since, timedelta):
        return now - since.total_seconds()
    if isinstance(since, datetime):
        return since.timestamp()
    if isinstance(since, date):
        return datetime(since.year, since.month, since.day).timestamp()
    if not isinstance(since, str):
        raise TypeError(
            f"since must be text like '7d' or '2026-11-01', a datetime, date or "
            f"timedelta, not {type(since).__name__}"
        )
    match = _AGO.fullmatch(since)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    try:
        return datetime.fromisoformat(since.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"since: {since!r} is neither a time ago (30m, 24h, 7d, 2w) nor a date "
            "(2026-11-01, 2026-11-01T09:00)"
        ) from None


def _read(path: Path, since: float | None) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    try:
        connection = _connect(path, create=False)
    except sqlite3.Error as error:
        raise OSError(f"cannot read the spend ledger {path}: {error}") from None
    try:
        present = _present(connection)
        # A file of an older schema (not written since): NULL for the columns it lacks.
        query = "SELECT " + ", ".join(
            name if name in present else f"NULL AS {name}" for name in _COLUMN_NAMES
        )
        query += " FROM spend"
        if since is None:
            return connection.execute(query).fetchall()
        return connection.execute(query + " WHERE ended_at >= ?", (since,)).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise OSError(f"cannot read the spend ledger {path}: {error}") from None
    finally:
        connection.close()


def _add(total: int | None, value: int | None) -> int | None:
    if value is None:
        return total
    return value if total is None else total + value


def _add_cost(total: Decimal | None, text: str | None) -> Decimal | None:
    if text is None:
        return total
    value = Decimal(text)
    # exact, whatever the notebook's decimal context says (`COST_CONTEXT`)
    return value if total is None else COST_CONTEXT.add(total, value)


class _Group:
    __slots__ = ("calls", "cells", "cost", "input", "output", "total", "unpriced")

    def __init__(self) -> None:
        self.cells: set[str] = set()
        self.calls = 0
        self.input: int | None = None
        self.output: int | None = None
        self.total: int | None = None
        self.cost: Decimal | None = None
        self.unpriced = 0

    def add(self, row: tuple[Any, ...]) -> None:
        self.cells.add(row[5])
        self.calls += row[7]
        self.input = _add(self.input, row[8])
        self.output = _add(self.output, row[9])
        self.total = _add(self.total, row[10])
        self.cost = _add_cost(self.cost, row[11])
        self.unpriced += row[12]


_FIGURE_DTYPES: Final = {
    "calls": "Int64",
    "input_tokens": "Int64",
    "output_tokens": "Int64",
    "total_tokens": "Int64",
    "cost": "Float64",
    "cost_exact": "string",
    "unpriced_calls": "Int64",
}
_CELL_DTYPES: Final = {
    "time": "datetime64[ns, UTC]",
    "notebook": "string",
    "cell_id": "string",
    "execution_count": "Int64",
    "trace_name": "string",
    "trace_id": "string",
    "models": "string",
    **_FIGURE_DTYPES,
    "errors": "Int64",
    "budget": "Float64",
    "max_tokens": "Int64",
    "budget_reached": "boolean",
    "budget_refused": "boolean",
}


def _day(ended_at: float) -> str:
    return datetime.fromtimestamp(ended_at).date().isoformat()


def _cells_frame(rows: Iterable[tuple[Any, ...]]) -> pd.DataFrame:
    cells: dict[str, tuple[Any, ...]] = {}
    models: dict[str, list[str]] = {}
    for row in rows:
        if row[6] is None:
            cells[row[5]] = row
        else:
            models.setdefault(row[5], []).append(row[6])
    ordered = sorted(cells.values(), key=lambda row: row[0])
    costs = [None if row[11] is None else Decimal(row[11]) for row in ordered]
    data: dict[str, list[Any]] = {
        "time": [pd.Timestamp(row[0], unit="s", tz="UTC") for row in ordered],
        "notebook": [row[1] for row in ordered],
        "cell_id": [row[2] for row in ordered],
        "execution_count": [row[3] for row in ordered],
        "trace_name": [row[4] for row in ordered],
        "trace_id": [row[5] for row in ordered],
        "models": [", ".join(models.get(row[5], ())) or None for row in ordered],
        "calls": [row[7] for row in ordered],
        "input_tokens": [row[8] for row in ordered],
        "output_tokens": [row[9] for row in ordered],
        "total_tokens": [row[10] for row in ordered],
        "cost": [None if cost is None else float(cost) for cost in costs],
        "cost_exact": [row[11] for row in ordered],
        "unpriced_calls": [row[12] for row in ordered],
        "errors": [row[13] for row in ordered],
        "budget": [None if row[14] is None else float(Decimal(row[14])) for row in ordered],
        "max_tokens": [row[15] for row in ordered],
        "budget_reached": [None if row[16] is None else bool(row[16]) for row in ordered],
        "budget_refused": [None if row[17] is None else bool(row[17]) for row in ordered],
    }
    return _typed(data, _CELL_DTYPES)


def _typed(data: dict[str, list[Any]], dtypes: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(data[name], dtype=object) for name in dtypes})
    for name, dtype in dtypes.items():
        if dtype.startswith("datetime"):
            frame[name] = pd.to_datetime(frame[name], utc=True)
        else:
            column: Any = frame[name]
            frame[name] = column.astype(dtype)
    return frame


def _grouped_frame(rows: Iterable[tuple[Any, ...]], by: Grouping) -> pd.DataFrame:
    groups: dict[Any, _Group] = {}
    for row in rows:
        is_model_row = row[6] is not None
        if (by == "model") != is_model_row:
            continue  # by model: the model rows; else the cells' own rows
        key = row[6] if by == "model" else row[1] if by == "notebook" else _day(row[0])
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        group.add(row)

    def order(item: tuple[Any, _Group]) -> tuple[Any, ...]:
        key, group = item
        if by == "day":
            return (key,)
        return (COST_CONTEXT.minus(group.cost or Decimal(0)), str(key))

    items = sorted(groups.items(), key=order)
    data: dict[str, list[Any]] = {
        by: [key for key, _ in items],
        "cells": [len(group.cells) for _, group in items],
        "calls": [group.calls for _, group in items],
        "input_tokens": [group.input for _, group in items],
        "output_tokens": [group.output for _, group in items],
        "total_tokens": [group.total for _, group in items],
        "cost": [None if group.cost is None else float(group.cost) for _, group in items],
        "cost_exact": [_text(group.cost) for _, group in items],
        "unpriced_calls": [group.unpriced for _, group in items],
    }
    return _typed(data, {by: "string", "cells": "Int64", **_FIGURE_DTYPES})


def grouping(by: object) -> Grouping:
    """`by` as a grouping of the ledger; ValueError when it is none."""
    if by == "model" or by == "notebook" or by == "day":
        return by
    raise ValueError(f"by must be one of {', '.join(GROUPINGS)} or None, not {by!r}")


def spend_dataframe(
    since: Since = None, by: Grouping | None = None, *, path: str | Path | None = None
) -> pd.DataFrame:
    """What traced cells cost, from the spend ledger (see `set_ledger`).

    `by=None`: one row per cell (time, notebook, cell id, execution count, trace name
    and id, the models it called, its totals, its budget: ``budget`` in dollars,
    ``max_tokens``, ``budget_reached`` and ``budget_refused``, all null for a cell
    without one); ``"model"``, ``"notebook"`` or
    ``"day"`` (local days): one row per group, with the number of cells. `since`:
    ``"24h"``, ``"7d"``, ``"2026-11-01"``, a `datetime`, `date` or `timedelta`.
    ``cost`` is a Float64 and ``cost_exact`` the exact decimal text; both are null when
    nothing of it was priced, and ``unpriced_calls`` says how many calls have no price
    (the cost is then a lower bound). Cells still queued are written first. `path`:
    another ledger file to read (default: the current one).
    """
    if by is not None:
        by = grouping(by)
    start = parse_since(since)
    file = ledger_file(path) if path is not None else ledger_path()
    flush()
    rows = [] if file is None else _read(file, start)
    if by is None:
        return _cells_frame(rows)
    return _grouped_frame(rows, by)


# -- the notebook's view -----------------------------------------------------------------------

_STYLE: Final = """<style>
.an-spend{font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:12px}
.an-spend table{border-collapse:collapse}
.an-spend th,.an-spend td{padding:2px 8px;text-align:right;white-space:nowrap}
.an-spend th:first-child,.an-spend td:first-child{text-align:left}
.an-spend .bar{display:inline-block;height:10px;background:#4e79a7;vertical-align:middle}
.an-spend td.bars{text-align:left;min-width:160px}
.an-spend .note{color:#777;margin-top:4px}
</style>"""


def _number(value: Any) -> str:
    return "—" if value is None or value is pd.NA else f"{int(value):,}"


def spend_html(frame: pd.DataFrame, by: Grouping, source: Path | None) -> str:
    """The table of a grouped `spend_dataframe`, with a bar of each group's cost
    (tokens when nothing is priced), as self-contained HTML."""
    costs = [None if text is pd.NA else Decimal(text) for text in frame["cost_exact"]]
    tokens = [None if value is pd.NA else int(value) for value in frame["total_tokens"]]
    priced = any(cost for cost in costs)
    measures: list[float] = (
        [float(cost or 0) for cost in costs] if priced else [float(t or 0) for t in tokens]
    )
    top = max(measures, default=0.0) or 1.0
    empty_label = {"model": "(no model)", "notebook": "(unknown notebook)", "day": "?"}[by]
    rows = []
    for index in range(len(frame)):
        key = frame[by].iloc[index]
        label = empty_label if key is pd.NA else str(key)
        cost = costs[index]
        unpriced = int(frame["unpriced_calls"].iloc[index])
        width = max(0.0, measures[index] / top * 160)
        rows.append(
            "<tr>"
            f"<td>{html.escape(label)}</td>"
            f"<td>{_number(frame['cells'].iloc[index])}</td>"
            f"<td>{_number(frame['calls'].iloc[index])}</td>"
            f"<td>{_number(tokens[index])}</td>"
            f"<td>{'—' if cost is None else html.escape('$' + format(cost, 'f'))}</td>"
            f"<td>{unpriced:,}</td>"
            f'<td class="bars"><span class="bar" style="width:{width:.1f}px"></span></td>'
            "</tr>"
        )
    total = Decimal(0)
    for cost in costs:
        if cost is not None:
            total = COST_CONTEXT.add(total, cost)
    unpriced_total = int(frame["unpriced_calls"].sum()) if len(frame) else 0
    note = (
        f"total ${format(total, 'f')}"
        + (f" + {unpriced_total:,} unpriced calls" if unpriced_total else "")
        + (f" · {html.escape(str(source))}" if source is not None else " · the ledger is off")
    )
    bar_title = "cost" if priced else "tokens"
    header = (
        f"<tr><th>{by}</th><th>cells</th><th>calls</th><th>tokens</th><th>cost</th>"
        f"<th>unpriced calls</th><th>{bar_title}</th></tr>"
    )
    body = "".join(rows) or '<tr><td colspan="7">no traced cell in this period</td></tr>'
    return (
        f'{_STYLE}<div class="an-spend"><table>{header}{body}</table>'
        f'<div class="note">{note}</div></div>'
    )
