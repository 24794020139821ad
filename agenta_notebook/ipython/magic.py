"""`%%agenta_trace`: run a notebook cell inside one root span and show its trace.

Load it in a notebook with ``%load_ext agenta_notebook``. To load it in every session,
add it to the IPython configuration (``~/.ipython/profile_default/ipython_config.py``,
or ``ipython_kernel_config.py`` for Jupyter kernels only)::

    c.InteractiveShellApp.extensions = ["agenta_notebook"]

Then mark a cell::

    %%agenta_trace [NAME] [-o VAR] [--quiet] [--save PATH] [--budget DOLLARS] [--max-tokens N]
    answer = await agent.run("question")

The cell runs exactly as it would without the first line (same output, same errors,
same variables, top-level ``await`` included) and, in addition, inside one root span
named NAME (default: the first line of code). Everything it starts (spans, `asyncio`
tasks, threads) is recorded in that cell's trace, shown live below the cell, and
returned by `agenta_notebook.last_trace()` once the cell ends.

How it works, since a cell magic cannot ``await``: an input transformer (in
``shell.input_transformers_cleanup``) turns a valid ``%%agenta_trace`` line into a
comment, so the body is compiled by IPython as an ordinary cell; the
``pre_run_cell`` event opens the root span and makes it the current OpenTelemetry
context, which the cell's code, its `asyncio` tasks and (through
`agenta_notebook.threads`) its threads inherit; ``post_run_cell`` closes it, marking
the error the cell raised, if any. A line with a bad option is left alone, so IPython
calls the magic function, which raises IPython's one-line ``UsageError``. Calling the
magic directly (``get_ipython().run_cell_magic("agenta_trace", "", code)``) also works,
without top-level ``await``.

Threads inherit the cell's span through `agenta_notebook.threads` (the same
propagation as OpenTelemetry's ``ThreadingInstrumentor``), turned on when the extension
loads; opt out with the environment variable
``AGENTA_NOTEBOOK_THREADS=0`` (see `agenta_notebook.threads`).

Cells run with ``silent=True`` (frontends' internal requests) fire no cell events and
are not traced.

``--save PATH`` writes the trace once the cell has ended and no span of it is running.
Never inside `SpanProcessor.on_end` (which must not block): if the trace is complete
when the cell ends, the file is written then, on the kernel's thread; otherwise the span
that ends last only signals a `SaveWorker`, whose thread writes it. The live view
redraws itself as spans end (`agenta_notebook.views.display` throttles its redraws).
"""

from __future__ import annotations

import ast
import atexit
import builtins
import contextlib
import keyword
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import (
    Magics,
    cell_magic,
    line_magic,
    magics_class,
    no_var_expand,
    output_can_be_silenced,
)
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from agenta_notebook import forksafe
from agenta_notebook.collector import fail_span
from agenta_notebook.core.usage import shorten
from agenta_notebook.errors import internal_error
from agenta_notebook.integrations.openai import maybe_instrument_on_load
from agenta_notebook.io import ledger
from agenta_notebook.io.otlp import current_export, maybe_export_on_load
from agenta_notebook.live import Trace
from agenta_notebook.runtime import (
    RUNTIME,
    Budget,
    get_collector,
    ledger_path,
    make_budget,
    set_last_trace,
    start_root,
    with_budget,
)
from agenta_notebook.threads import disable_thread_propagation, enable_thread_propagation
from agenta_notebook.views import display

if TYPE_CHECKING:
    from contextvars import Token

MAGIC_NAME: Final = "agenta_trace"
#: The line magic showing the spend ledger.
SPEND_MAGIC_NAME: Final = "agenta_spend"
#: The line magic comparing traces held in variables.
COMPARE_MAGIC_NAME: Final = "agenta_compare"
#: At exit, how long (seconds) the ``--save`` files still being written are waited for.
EXIT_WAIT: Final = 10.0
#: How many cells' last runs are remembered (to close a re-run cell's old view).
REMEMBERED_CELLS: Final = 256
#: Cells running one inside another that are tracked (a deeper nesting is not expected).
MAX_NESTED_CELLS: Final = 64
#: Attribute on the root span holding the notebook cell id, when the frontend sends one.
CELL_ID_ATTRIBUTE: Final = "agenta_notebook.cell_id"

_HEADER: Final = re.compile(r"[ \t]*%%" + MAGIC_NAME + r"(?:[ \t]+(?P<args>.*?))?[ \t]*\r?\n?\Z")
_NAME_LENGTH: Final = 80
#: The code of the method that runs a cell's compiled code (see `_inside_a_running_cell`).
_RUN_CODE: Final = InteractiveShell.run_code.__code__
#: How IPython's own transformer spells a cell magic that is left in the cell.
_MAGIC_CALL: Final = f"get_ipython().run_cell_magic({MAGIC_NAME!r}"

#: Variables IPython keeps in the user's namespace: `-o` must not replace them.
_IPYTHON_NAMES: Final = frozenset(
    {"_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "_dh", "_sh", "In", "Out"}
    | {"get_ipython", "exit", "quit"}
)
#: ... and the numbered ones: `_5` (output 5), `_i5` (input 5).
_IPYTHON_NUMBERED: Final = re.compile(r"_i?\d+")


def _shadows_a_reserved_name(name: str) -> bool:
    """True when `name` is a builtin, a dunder name or a variable of IPython's own."""
    return (
        name in _IPYTHON_NAMES
        or hasattr(builtins, name)
        or (name.startswith("__") and name.endswith("__"))
        or _IPYTHON_NUMBERED.fullmatch(name) is not None
    )


@dataclass(frozen=True, slots=True)
class CellOptions:
    """The parsed ``%%agenta_trace`` line."""

    name: str | None = None
    output: str | None = None
    quiet: bool = False
    save: str | None = None
    #: --budget / --max-tokens, checked (None: no budget)
    budget: Budget | None = None


def _inside_a_running_cell() -> bool:
    """True when called from code that a cell is running (IPython's `run_code` is on the
    stack): a magic transforming its body, or a nested `run_cell`; False for the
    transformation of a cell about to run."""
    code = _RUN_CODE
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _header_index(lines: list[str]) -> int | None:
    for index, line in enumerate(lines):
        if line and not line.isspace():
            return index if _HEADER.match(line) else None
    return None


def _header_arguments(line: str) -> str:
    match = _HEADER.match(line)
    return (match.group("args") or "") if match else ""


def _unquote(value: str | None) -> str | None:
    # IPython splits magic lines without removing quotes: 'my run' arrives quoted.
    if value is not None and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _budget(dollars: str | None, tokens: str | None) -> Budget | None:
    """The checked --budget / --max-tokens of a magic line; `UsageError` on a bad one."""
    dollars = _unquote(dollars)
    tokens = _unquote(tokens)
    if tokens is not None and not tokens.strip().isdecimal():
        raise UsageError(f"%%{MAGIC_NAME}: --max-tokens needs a whole number, not {tokens!r}")
    try:
        return make_budget(dollars, int(tokens) if tokens is not None else None)
    except (TypeError, ValueError) as error:
        message = (
            str(error)
            .replace("budget must be", "--budget needs")
            .replace("max_tokens must be", "--max-tokens needs")
        )
        raise UsageError(f"%%{MAGIC_NAME}: {message}") from None


def cell_name(body: str) -> str:
    """The default root name: the first line of code in the cell, shortened."""
    for line in body.splitlines():
        text = line.strip()
        if text:
            return shorten(text, _NAME_LENGTH)
    return "cell"


def _reset_context(token: Token[otel_context.Context]) -> None:
    # ipykernel runs a cell with top-level await in its own asyncio task, and fires
    # post_run_cell outside it: there the token belongs to the task's context, which
    # is discarded with the task, so there is nothing to undo (ValueError: made in
    # another context; RuntimeError: used already). Resetting the variable directly (not
    # `otel_context.detach`) avoids OpenTelemetry logging that as an error.
    with contextlib.suppress(ValueError, RuntimeError):
        token.var.reset(token)


def _tell_user(message: str) -> None:
    """A problem the user can fix (a --save path that cannot be written): one line in the
    cell's output. Failures of ours go to `internal_error` instead."""
    print(f"agenta_notebook: {message}", file=sys.stderr)


class SaveWorker:
    """Writes the ``--save`` files of cells whose spans outlive the cell, on its own thread.

    The last span of such a trace ends on some thread of the user's, inside
    `SpanProcessor.on_end`, which must not block: there the trace only *signals* this
    worker (an append under a lock), which builds the tree and writes the file. One
    thread serves every cell of a shell; it starts when a cell ends with spans still
    running and exits once every save it was told to expect is written (or withdrawn),
    so no thread outlives the work. A trace whose spans never end keeps it waiting,
    idle.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition(forksafe.new_lock())
        self._ready: deque[CellRun] = deque()
        self._expected = 0
        self._thread: threading.Thread | None = None
        self._waited_at_exit = False
        forksafe.register(self.after_fork)

    def after_fork(self) -> None:
        """In a forked child the worker thread does not exist, nor do the parent's
        cells: nothing to write (their traces are dropped), a new thread when needed."""
        self._changed = threading.Condition(forksafe.new_lock())
        self._ready = deque()
        self._expected = 0
        self._thread = None

    def expect(self) -> None:
        """A cell ended with spans still running: its save will be signalled later.

        Called on the kernel's thread, so that the worker is never started inside
        `on_end`.
        """
        with self._changed:
            self._expected += 1
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._work, name="agenta_notebook-save", daemon=True)
            self._thread = thread
            if not self._waited_at_exit:
                # Threads of the user's are joined before `atexit` runs: the saves they
                # signal on their way out are written before the process ends.
                self._waited_at_exit = True
                atexit.register(self.wait, EXIT_WAIT)
        thread.start()

    def withdraw(self) -> None:
        """An expected save was written on the kernel's thread after all."""
        with self._changed:
            self._expected -= 1
            self._changed.notify_all()

    def signal(self, run: CellRun) -> None:
        """`run`'s trace is complete: write it (cheap, safe inside `on_end`)."""
        with self._changed:
            self._ready.append(run)
            self._changed.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until every expected save is written; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._ready and self._expected > 0:
                    self._changed.wait()
                if not self._ready:
                    # Decided under the lock: an `expect` after this starts a new thread.
                    self._thread = None
                    self._changed.notify_all()
                    return
                run = self._ready.popleft()
                self._expected -= 1
            try:
                run.save_now()
            except BaseException:  # only under the test suite (`internal_error` raises)
                with self._changed:
                    self._thread = None
                    self._changed.notify_all()
                raise


class CellRun:
    """One traced run of a cell: its root span, its trace and its live view."""

    def __init__(
        self,
        shell: Any,
        options: CellOptions,
        name: str,
        attributes: dict[str, Any] | None = None,
        *,
        saver: SaveWorker,
    ) -> None:
        self.shell = shell
        self.options = options
        self._saver = saver
        self._lock = forksafe.new_lock()
        self._save_claimed = False
        #: the save worker counts on this run (`SaveWorker.expect`), once at most
        self._worker_expects = False
        self._ended = False
        self._display: display.TraceDisplay | None = None
        #: when the cell's code stopped (`mark_code_end`), if known before the cell ends
        self.code_end_ns: int | None = None
        #: what the spend ledger records of where the cell ran
        self.cell_id: str | None = (attributes or {}).get(CELL_ID_ATTRIBUTE)
        self.execution_count: int | None = getattr(shell, "execution_count", None)
        enclosing = otel_trace.get_current_span().get_span_context().trace_id
        self.root, self.trace = start_root(name, with_budget(attributes, options.budget))
        RUNTIME.budgets.start(self.trace, options.budget, enclosing)
        self._token = otel_context.attach(otel_trace.set_span_in_context(self.root))

    def show(self) -> None:
        """Display the live view (unless --quiet); it follows the spans as they end."""
        if self.options.quiet:
            return
        try:
            self._display = display.show_trace(self.trace)
        except Exception:  # the cell runs and is traced without its view
            internal_error("showing the trace of a cell")

    # -- when the cell ends ----------------------------------------------------------------
    def mark_code_end(self) -> None:
        """The cell's code has stopped (IPython is about to format its traceback): the
        root span ends now, whatever IPython does before the cell's end event."""
        if self.code_end_ns is None and not self._ended:
            self.code_end_ns = time.time_ns()

    def end(self, error: BaseException | None) -> None:
        """Close the root span (failed by `error`, if any) and settle the view.

        The root ends when the cell's code stopped (`mark_code_end`), or else now: not
        after IPython's traceback formatting, nor after the error is recorded on it.
        """
        if self._ended:
            return
        self._ended = True
        # The mark stands only for a cell that failed: its code stopped there.
        end_ns = self.code_end_ns if error is not None and self.code_end_ns else time.time_ns()
        RUNTIME.budgets.end(self.trace)
        _reset_context(self._token)
        try:
            if error is not None:
                fail_span(self.root, error)
            self.root.end(end_time=end_ns)
        finally:
            # A span processor of the user's that raises in on_end must not leave the
            # cell's trace half-settled: it is still closed, returned and bound.
            self.trace.closed = True
            set_last_trace(self.trace)
            if self.options.output:
                self.shell.user_ns[self.options.output] = self.trace
        self._record_spend()
        try:
            shown = self._display
            if shown is not None:
                try:
                    shown.finish()
                except Exception:  # the trace is recorded and returned all the same
                    internal_error("settling the view of a cell's trace")
            if self.options.save is not None:
                self._save_when_complete()
        except KeyboardInterrupt:
            # Ctrl-C while a big trace is being settled or written: the save is not
            # skipped, it is handed to the worker, and the user is told so.
            if self.options.save is not None:
                self._save_later(f"interrupted; the trace will be saved to {self.options.save}")

    def _record_spend(self) -> None:
        """Queue the cell's totals for the spend ledger (written off the cell's path)."""
        try:
            ledger.record(
                self.trace,
                notebook=ledger.notebook_path(self.shell),
                cell_id=self.cell_id,
                execution_count=self.execution_count,
            )
        except Exception:  # the cell is traced and shown all the same
            internal_error("queueing a cell's spend for the ledger")

    # -- --save: here if the trace is complete, else by the worker once it is ------------
    def _claim_save(self) -> bool:
        """True once: when the cell has ended and no span of its trace is running."""
        with self._lock:
            if self._save_claimed or not self.trace.closed or self.trace.running:
                return False
            self._save_claimed = True
            return True

    def _save_when_complete(self) -> None:
        # On the kernel's thread, at the end of the cell.
        if self._claim_save():
            self.save_now()
            return
        self._expect_worker()
        self.trace.add_listener(self._on_late_span)
        if self._claim_save():  # the last span ended before the listener was there
            self.trace.remove_listener(self._on_late_span)
            self._saver.withdraw()
            self._worker_expects = False
            self.save_now()
            return
        running = len(self.trace.open_spans())
        _tell_user(
            f"{running} span(s) of this cell are still running; the trace will be saved "
            f"to {self.options.save} when they end"
        )

    def _save_later(self, why: str) -> None:
        """The save could not finish on the kernel's thread (an interrupt): the worker
        writes it, now if the trace is complete, else when its last span ends. The file
        is replaced atomically, so a write cut short left no half file behind."""
        self.trace.remove_listener(self._on_late_span)
        with self._lock:
            self._save_claimed = False
        self._expect_worker()
        self.trace.add_listener(self._on_late_span)
        if self._claim_save():
            self.trace.remove_listener(self._on_late_span)
            self._saver.signal(self)
        _tell_user(why + " in the background")

    def _expect_worker(self) -> None:
        # Once per run: an interrupt after the worker was told to expect this run must
        # not count it twice (the worker would then wait for a save that never comes).
        if not self._worker_expects:
            self._worker_expects = True
            self._saver.expect()

    def _on_late_span(self, trace: Trace) -> None:
        # Inside `on_end`, on the thread that ended a span: no tree, no I/O, only a signal.
        if self._claim_save():
            self._saver.signal(self)

    def save_now(self) -> None:
        """Write the trace to the --save path; a path that cannot be written is told."""
        self.trace.remove_listener(self._on_late_span)
        path = self.options.save
        if path is None:
            return
        try:
            self.trace.save(path)
        except OSError as error:  # a missing folder, no permission: the user's to fix
            _tell_user(f"could not save the trace to {path}: {error}")
        except Exception:  # a failure of ours: the traced code is not affected
            internal_error(f"saving the trace to {path}")

    def close_display(self) -> None:
        """The cell is run again: its old view stops updating and is closed."""
        shown, self._display = self._display, None
        if shown is not None:
            try:
                shown.close()
            except Exception:  # the new run of the cell goes ahead
                internal_error("closing the old view of a re-run cell")


def _is_ours(callback: object) -> bool:
    # Marked by class attribute, not identity: a reloaded module makes new classes.
    owner = getattr(callback, "__self__", callback)
    return bool(getattr(owner, "_agenta_notebook_hooks", False))


@magics_class
class TraceMagics(Magics):
    """The ``%%agenta_trace`` magic and the hooks that trace a marked cell."""

    _agenta_notebook_hooks: Final = True

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        # id(ExecutionInfo) -> (info, run): pre_run_cell and post_run_cell share `info`.
        self._open: dict[int, tuple[Any, CellRun]] = {}
        #: id(ExecutionInfo) of every cell running now, traced or not, innermost last: a
        #: cell run by another (`run_cell`, `%run`) sits above the one that ran it.
        self._running: list[int] = []
        self._by_cell: OrderedDict[str, CellRun] = OrderedDict()
        self._parsed: dict[str, CellOptions | None] = {}
        #: writes the --save files of cells whose spans outlive the cell
        self.saver = SaveWorker()

    # -- parsing ---------------------------------------------------------------------------
    def parse_line(self, line: str) -> CellOptions:
        """Parse the magic's line; raises `UsageError` (one line) on a bad option."""
        try:
            args = parse_argstring(self.agenta_trace, line)  # type: ignore[no-untyped-call]
        except ValueError as error:  # shlex: "No closing quotation", "No escaped character"
            raise UsageError(f"%%{MAGIC_NAME}: {error} in {line!r}") from None
        output = _unquote(args.output)
        if output is not None and (not output.isidentifier() or keyword.iskeyword(output)):
            raise UsageError(f"%%{MAGIC_NAME}: -o needs a variable name, not {output!r}")
        if output is not None and _shadows_a_reserved_name(output):
            raise UsageError(
                f"%%{MAGIC_NAME}: -o {output} would replace a Python builtin or a variable "
                "of IPython's own; choose another name"
            )
        return CellOptions(
            name=_unquote(args.name),
            output=output,
            quiet=args.quiet,
            save=_unquote(args.save),
            budget=_budget(args.budget, args.max_tokens),
        )

    def _try_options(self, line: str) -> CellOptions | None:
        if line in self._parsed:
            return self._parsed[line]
        try:
            options: CellOptions | None = self.parse_line(line)
        except (UsageError, SystemExit, ValueError):
            options = None
        if len(self._parsed) > 512:
            self._parsed.clear()
        self._parsed[line] = options
        return options

    def cell_options(self, raw_cell: str) -> tuple[CellOptions, str] | None:
        """The options and the body of a cell that starts with a valid magic line."""
        lines = raw_cell.splitlines(keepends=True)
        index = _header_index(lines)
        if index is None:
            return None
        options = self._try_options(_header_arguments(lines[index]))
        if options is None:
            return None
        return options, "".join(lines[index + 1 :])

    # -- the input transformer -------------------------------------------------------------
    def transform(self, lines: list[str]) -> list[str]:
        """Comment out a valid magic line so IPython runs the body as an ordinary cell.

        Keeping the line, as a comment, keeps the line numbers and the source shown in
        tracebacks the same as in the cell the user sees. A bad line is left alone, for
        IPython to call the magic function, which raises the `UsageError`.
        """
        index = _header_index(lines)
        if index is None or self._try_options(_header_arguments(lines[index])) is None:
            return lines
        if _inside_a_running_cell():
            # A cell magic around this one (`%%time`, `%%capture`) transforms its body
            # while the cell runs: no cell event will come for it, so the line is left
            # for IPython to call the magic function, which traces the body itself.
            return lines
        header = lines[index].strip()
        body = lines[index + 1 :]
        first = next((i for i, line in enumerate(body) if line.strip()), None)
        if first is not None and body[first].startswith("%%"):
            # Another cell magic next (`%%time`, `%%capture`): IPython only recognises
            # one on the cell's first line, so the header goes rather than being kept
            # as a comment; the inner magic runs inside this cell's root span.
            return body[first:]
        if first is not None and body[first][:1] in (" ", "\t"):
            # IPython removes a cell's common indent by looking at its first line, which
            # was this header: do the same for the body.
            indent = body[first][: len(body[first]) - len(body[first].lstrip(" \t"))]
            body = [line[len(indent) :] if line.startswith(indent) else line for line in body]
        return [f"# {header}\n", *body]

    # -- execution events ------------------------------------------------------------------
    def pre_run_cell(self, info: Any) -> None:
        ledger.WRITER.shell_busy()
        running = self._running
        running.append(id(info))
        if len(running) > MAX_NESTED_CELLS:  # a cell whose end event never came
            del running[0]
        try:
            raw_cell = info.raw_cell or ""
            transformed = getattr(info, "transformed_cell", None)
            if isinstance(transformed, str) and transformed.lstrip().startswith(_MAGIC_CALL):
                return  # not stripped (another transformer?): the magic function runs it
            parsed = self.cell_options(raw_cell)
            if parsed is None:
                return
            options, body = parsed
            cell_id = getattr(info, "cell_id", None)
            key = cell_id or raw_cell
            previous = self._by_cell.pop(key, None)
            if previous is not None:
                previous.close_display()
            attributes = {CELL_ID_ATTRIBUTE: cell_id} if cell_id else None
            run = CellRun(
                self.shell,
                options,
                options.name or cell_name(body),
                attributes,
                saver=self.saver,
            )
            # Registered before anything slow, so that post_run_cell always ends it.
            self._open[id(info)] = (info, run)
            self._by_cell[key] = run
            # Forget cells whose trace retention dropped (their views are closed already),
            # so that this map never keeps a dropped trace alive.
            for stale in [k for k, old in self._by_cell.items() if old.trace.dropped]:
                del self._by_cell[stale]
            while len(self._by_cell) > REMEMBERED_CELLS:
                self._by_cell.popitem(last=False)
            run.show()
        except Exception:  # the cell runs all the same, untraced
            internal_error("starting the trace of a cell")

    def post_run_cell(self, result: Any) -> None:
        ledger.WRITER.shell_idle()
        running = self._running
        if result is None:
            if running:
                running.pop()
        elif id(result.info) in running:
            # The innermost entry for it (an `ExecutionInfo` id can come back after the
            # object is freed, never while it runs).
            del running[len(running) - 1 - running[::-1].index(id(result.info))]
        try:
            if result is None:
                # The cell's task was cancelled before it returned (an interrupt).
                if self._open:
                    _, run = self._open.pop(next(reversed(self._open)))
                    run.end(KeyboardInterrupt())
                return
            entry = self._open.pop(id(result.info), None)
            if entry is None:
                return
            error = result.error_in_exec
            if error is None:
                error = result.error_before_exec
            entry[1].end(error)
        except Exception:  # the cell has run; its trace may be left open
            internal_error("ending the trace of a cell")

    def code_ended(self) -> None:
        """The code of the innermost running cell has stopped (it raised): mark its end
        when that cell is traced. A cell run from a traced cell (`run_cell`, `%run`) that
        fails marks nothing: the traced cell's code goes on."""
        if not self._running:
            return
        entry = self._open.get(self._running[-1])
        if entry is not None:
            entry[1].mark_code_end()

    def adopt(self, previous: Any) -> None:
        """Take over the cells `previous` (an unloaded instance) still has open."""
        self._open.update(previous._open)
        self._running[:0] = previous._running
        self._by_cell.update(previous._by_cell)
        previous._open.clear()
        previous._by_cell.clear()

    # -- the magic function ----------------------------------------------------------------
    @magic_arguments(name="%" + MAGIC_NAME)  # type: ignore[no-untyped-call, untyped-decorator]
    @argument(  # type: ignore[no-untyped-call, untyped-decorator]
        "name", nargs="?", default=None, help="Name of the root span (default: the first line)."
    )
    @argument(  # type: ignore[no-untyped-call, untyped-decorator]
        "-o", "--output", metavar="VAR", default=None, help="Store the Trace in variable VAR."
    )
    @argument(  # type: ignore[no-untyped-call, untyped-decorator]
        "--quiet", action="store_true", help="Show nothing; still record the trace."
    )
    @argument(  # type: ignore[no-untyped-call, untyped-decorator]
        "--save",
        metavar="PATH",
        default=None,
        help="Write the trace to PATH (OTLP JSON) once every span in it has ended.",
    )
    @argument(  # type: ignore[no-untyped-call, untyped-decorator]
        "--budget",
        metavar="DOLLARS",
        default=None,
        help="Refuse the cell's model requests once its counted cost reaches DOLLARS.",
    )
    @argument(  # type: ignore[no-untyped-call, untyped-decorator]
        "--max-tokens",
        metavar="N",
        default=None,
        help="Refuse the cell's model requests once its counted tokens reach N.",
    )
    @no_var_expand
    @cell_magic
    @output_can_be_silenced
    def agenta_trace(self, line: str, cell: str) -> Any:
        """Run the cell inside one root span and show its trace: cost, tokens, latency
        and errors, subtotalled at every node.

        Everything the cell runs is recorded, including `asyncio` tasks and threads it
        starts; spans that end after the cell are added when they end. Top-level
        ``await`` works when the magic is the first line of the cell. After the cell,
        ``agenta_notebook.last_trace()`` returns its Trace.
        """
        options = self.parse_line(line)
        body = cell or ""
        run = CellRun(self.shell, options, options.name or cell_name(body), saver=self.saver)
        failure: BaseException | None = None
        try:
            run.show()
            return _run_body(self.shell, body)
        except BaseException as error:
            failure = error
            raise
        finally:
            run.end(failure)

    # -- %agenta_spend ---------------------------------------------------------------------
    @magic_arguments(name="%" + SPEND_MAGIC_NAME)  # type: ignore[no-untyped-call, untyped-decorator]
    @argument(  # type: ignore[no-untyped-call, untyped-decorator]
        "--since",
        metavar="WHEN",
        default=None,
        help="Only cells since WHEN: a time ago (30m, 24h, 7d, 2w) or a date (2026-11-01).",
    )
    @argument(  # type: ignore[no-untyped-call, untyped-decorator]
        "--by",
        default="day",
        help="Group the cells by model, notebook or day (the default).",
    )
    @no_var_expand
    @line_magic
    def agenta_spend(self, line: str) -> None:
        """Show what traced cells cost, from the spend ledger: a table and a bar chart.

        Every finished ``%%agenta_trace`` cell is recorded there (see
        `agenta_notebook.set_ledger`); `agenta_notebook.spend_dataframe()` returns the
        same figures as a DataFrame.
        """
        try:
            args = parse_argstring(self.agenta_spend, line)  # type: ignore[no-untyped-call]
        except ValueError as error:  # shlex: "No closing quotation"
            raise UsageError(f"%{SPEND_MAGIC_NAME}: {error} in {line!r}") from None
        try:
            by = ledger.grouping(_unquote(args.by))
        except ValueError:
            raise UsageError(
                f"%{SPEND_MAGIC_NAME}: --by must be one of {', '.join(ledger.GROUPINGS)}, "
                f"not {_unquote(args.by)!r}"
            ) from None
        since = _unquote(args.since)
        try:
            ledger.parse_since(since)
        except ValueError as error:
            raise UsageError(f"%{SPEND_MAGIC_NAME}: --{error}") from None
        try:
            frame = ledger.spend_dataframe(since=since, by=by)
        except OSError as error:  # a ledger that cannot be read: the user's to fix
            raise UsageError(f"%{SPEND_MAGIC_NAME}: {error}") from None
        from IPython.display import HTML
        from IPython.display import display as show

        page = HTML(ledger.spend_html(frame, by, ledger_path()))  # type: ignore[no-untyped-call]
        show(page)  # type: ignore[no-untyped-call]

    # -- %agenta_compare ---------------------------------------------------------------------
    @no_var_expand
    @line_magic
    def agenta_compare(self, line: str) -> Any:
        """Compare traces held in variables: ``%agenta_compare run_a run_b [...]``.

        The same as ``agenta_notebook.compare(run_a, run_b, ...)``: the spans aligned by
        their path from the root, with the deltas of two runs or the min / median / max
        of three or more. Each name may be a variable or an expression (``runs[0]``).
        """
        from agenta_notebook.io.compare import compare

        names = line.split()  # each an expression without spaces: `runs["a"]`, `runs[0]`
        if len(names) < 2:
            raise UsageError(
                f"%{COMPARE_MAGIC_NAME}: name at least two variables holding traces, "
                f"e.g. %{COMPARE_MAGIC_NAME} run_a run_b"
            )
        namespace = self.shell.user_ns if self.shell is not None else {}
        traces = []
        for name in names:
            try:
                value = eval(name, namespace)  # the user's own expression
            except Exception as error:
                raise UsageError(f"%{COMPARE_MAGIC_NAME}: {name}: {error!r}") from None
            if not isinstance(value, Trace):
                raise UsageError(
                    f"%{COMPARE_MAGIC_NAME}: {name} is a {type(value).__name__}, not a trace "
                    "(keep one with %%agenta_trace -o NAME, or an.load(path))"
                )
            traces.append(value)
        return compare(*traces)


def _run_body(shell: Any, body: str) -> Any:
    """Run `body` like a cell in the user namespace; return its last expression's value."""
    source = shell.transform_cell(body)
    try:
        module = shell.transform_ast(shell.compile.ast_parse(source))
        last: ast.expr | None = None
        if module.body and isinstance(module.body[-1], ast.Expr):
            last = module.body.pop().value
        # Both parts compiled before anything runs: `ast.parse` accepts a top-level
        # `await`, compiling it outside a coroutine is what fails.
        statements = shell.compile(module, "<agenta_trace cell>", "exec") if module.body else None
        expression = (
            shell.compile(ast.Expression(last), "<agenta_trace cell>", "eval")
            if last is not None
            else None
        )
    except SyntaxError as error:
        if "await" in str(error.msg):
            raise UsageError(
                "top-level await needs %%agenta_trace on the first line of the cell"
            ) from None
        raise
    namespace = shell.user_ns
    if statements is not None:
        exec(statements, shell.user_global_ns, namespace)
    if expression is None:
        return None
    return eval(expression, shell.user_global_ns, namespace)


_SHELL_ATTRIBUTE: Final = "_agenta_notebook_magics"


class _MarkCodeEnd:
    """Stands in for the shell's `showtraceback` while the extension is loaded.

    IPython calls `showtraceback` as soon as a cell's code raises, then formats the
    traceback (hundreds of milliseconds for a deep one) before the cell's end event:
    the open cells' root spans are marked as ended first.
    """

    _agenta_notebook_hooks: Final = True

    def __init__(self, shell: Any, magics: TraceMagics) -> None:
        self.magics = magics
        #: the shell's own attribute it replaced, if the instance had one
        self.replaced = shell.__dict__.get("showtraceback")
        self.original = shell.showtraceback

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        try:
            # Only IPython's own calls when the cell's code raised: not a call of the
            # user's (or a library's) from a cell that goes on afterwards.
            if kwargs.get("running_compiled_code") or kwargs.get("exception_only"):
                self.magics.code_ended()
        except Exception:  # the traceback is shown all the same
            internal_error("marking the end of a cell's code")
        return self.original(*args, **kwargs)


def _remove_code_end_marker(shell: Any) -> None:
    marker = shell.__dict__.get("showtraceback")
    if not _is_ours(marker):
        return
    if marker.replaced is not None:
        shell.showtraceback = marker.replaced
    else:
        del shell.showtraceback


def _warm_up_views(shell: Any) -> None:
    """Import the widget view now, in a kernel, rather than inside the first traced
    cell's root span (the first import of ipywidgets takes ~0.1 s)."""
    if getattr(shell, "kernel", None) is None:
        return
    try:
        import agenta_notebook.views.widget  # noqa: F401
    except ImportError:  # no ipywidgets: the views are static HTML
        return


class _RemoveWhenDone:
    """After an unload mid-cell: once the open cells have ended, remove the last hooks."""

    _agenta_notebook_hooks: Final = True

    def __init__(self, shell: Any, magics: TraceMagics) -> None:
        self.shell = shell
        self.magics = magics

    def __call__(self, result: Any) -> None:
        if not self.magics._open:
            _remove_hooks(self.shell)


def _remove_hooks(shell: Any, *, keep_post_run: bool = False) -> None:
    _remove_code_end_marker(shell)
    shell.input_transformers_cleanup[:] = [
        transform for transform in shell.input_transformers_cleanup if not _is_ours(transform)
    ]
    for event in ("pre_run_cell", "post_run_cell"):
        if keep_post_run and event == "post_run_cell":
            continue
        callbacks = shell.events.callbacks[event]
        callbacks[:] = [callback for callback in callbacks if not _is_ours(callback)]


def load(shell: Any) -> TraceMagics:
    """Register the magic, the input transformer and the hooks on `shell` (idempotent)."""
    previous = getattr(shell, _SHELL_ATTRIBUTE, None)
    _remove_hooks(shell)
    magics = TraceMagics(shell)
    if _is_ours(getattr(previous, "transform", None)):
        magics.adopt(previous)
    get_collector()
    shell.register_magics(magics)
    shell.input_transformers_cleanup.append(magics.transform)
    shell.events.register("pre_run_cell", magics.pre_run_cell)
    shell.events.register("post_run_cell", magics.post_run_cell)
    shell.showtraceback = _MarkCodeEnd(shell, magics)
    setattr(shell, _SHELL_ATTRIBUTE, magics)
    enable_thread_propagation()
    RUNTIME.budgets.guard()  # taken off by a previous unload
    # Both are opt-in through the environment and idempotent, so a reload adds nothing.
    maybe_instrument_on_load()
    if current_export() is None:
        maybe_export_on_load()
    _warm_up_views(shell)
    return magics


def unload(shell: Any) -> None:
    """Undo `load`; a cell still running keeps its hook until it ends, then it is removed."""
    magics = getattr(shell, _SHELL_ATTRIBUTE, None)
    still_open = isinstance(magics, TraceMagics) and bool(magics._open)
    if not RUNTIME.budgets.by_trace:  # the budgets' request guards go with the extension
        RUNTIME.budgets.reset(guards=False)
    _remove_hooks(shell, keep_post_run=still_open)
    RUNTIME.views.close_comparisons()  # their widgets go with the extension
    if still_open:
        assert isinstance(magics, TraceMagics)
        # Runs after the old hook has ended the cell (callbacks run in order).
        shell.events.register("post_run_cell", _RemoveWhenDone(shell, magics))
    shell.magics_manager.magics["cell"].pop(MAGIC_NAME, None)
    shell.magics_manager.magics["line"].pop(SPEND_MAGIC_NAME, None)
    shell.magics_manager.magics["line"].pop(COMPARE_MAGIC_NAME, None)
    shell.magics_manager.registry.pop(TraceMagics.__name__, None)
    disable_thread_propagation()
