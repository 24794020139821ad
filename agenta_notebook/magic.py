"""`%%agenta_trace`: run a notebook cell inside one root span and show its trace.

Load it in a notebook with ``%load_ext agenta_notebook``. To load it in every session,
add it to the IPython configuration (``~/.ipython/profile_default/ipython_config.py``,
or ``ipython_kernel_config.py`` for Jupyter kernels only)::

    c.InteractiveShellApp.extensions = ["agenta_notebook"]

Then mark a cell::

    %%agenta_trace [NAME] [-o VAR] [--quiet] [--save PATH]
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
"""

from __future__ import annotations

import ast
import keyword
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import (
    Magics,
    cell_magic,
    magics_class,
    no_var_expand,
    output_can_be_silenced,
)
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from .collector import _set_last_trace, fail_span, get_collector, start_root
from .threads import disable_thread_propagation, enable_thread_propagation
from .tree import Trace
from .usage import shorten

if TYPE_CHECKING:
    from contextvars import Token

    from .display import TraceDisplay

MAGIC_NAME: Final = "agenta_trace"
#: At most this often (seconds) a live view is redrawn while spans arrive.
REFRESH_INTERVAL: Final = 0.2
#: How many cells' last runs are remembered (to close a re-run cell's old view).
REMEMBERED_CELLS: Final = 256
#: Attribute on the root span holding the notebook cell id, when the frontend sends one.
CELL_ID_ATTRIBUTE: Final = "agenta_notebook.cell_id"

_HEADER: Final = re.compile(r"[ \t]*%%" + MAGIC_NAME + r"(?:[ \t]+(?P<args>.*?))?[ \t]*\r?\n?\Z")
_NAME_LENGTH: Final = 80
#: The code of the method that runs a cell's compiled code (see `_inside_a_running_cell`).
_RUN_CODE: Final = InteractiveShell.run_code.__code__
#: How IPython's own transformer spells a cell magic that is left in the cell.
_MAGIC_CALL: Final = f"get_ipython().run_cell_magic({MAGIC_NAME!r}"


@dataclass(frozen=True, slots=True)
class CellOptions:
    """The parsed ``%%agenta_trace`` line."""

    name: str | None = None
    output: str | None = None
    quiet: bool = False
    save: str | None = None


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


def cell_name(body: str) -> str:
    """The default root name: the first line of code in the cell, shortened."""
    for line in body.splitlines():
        text = line.strip()
        if text:
            return shorten(text, _NAME_LENGTH)
    return "cell"


class _Throttle:
    """Call `action` at most once per `interval`, from any thread, never dropping the last.

    A call inside the interval schedules one trailing call at the end of it, so the
    view always ends up showing the latest state.
    """

    def __init__(self, action: Callable[[], None], interval: float) -> None:
        self._action = action
        self._interval = interval
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._timer: threading.Timer | None = None
        self._stopped = False

    def __call__(self) -> None:
        with self._lock:
            if self._stopped or self._timer is not None:
                return
            now = time.monotonic()
            wait = self._last + self._interval - now
            if wait > 0:
                timer = threading.Timer(wait, self._fire)
                timer.daemon = True
                self._timer = timer
                timer.start()
                return
            self._last = now
        self._action()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if self._stopped:
                return
            self._last = time.monotonic()
        self._action()

    def cancel_pending(self) -> None:
        """Drop a scheduled call (the caller is about to redraw anyway)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last = time.monotonic()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def _reset_context(token: Token[otel_context.Context]) -> None:
    # ipykernel runs a cell with top-level await in its own asyncio task, and fires
    # post_run_cell outside it: there the token belongs to the task's context, which
    # is discarded with the task, so there is nothing to undo. Resetting the variable
    # directly (not `otel_context.detach`) avoids OpenTelemetry logging that as an error.
    try:
        token.var.reset(token)
    except (ValueError, RuntimeError):
        pass


def _warn(message: str) -> None:
    print(f"agenta_notebook: {message}", file=sys.stderr)


class CellRun:
    """One traced run of a cell: its root span, its trace and its live view."""

    def __init__(
        self,
        shell: Any,
        options: CellOptions,
        name: str,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self.shell = shell
        self.options = options
        self._lock = threading.Lock()
        self._saved = False
        self._ended = False
        self._display: TraceDisplay | None = None
        self._throttle: _Throttle | None = None
        self.root, self.trace = start_root(name, attributes)
        self._token = otel_context.attach(otel_trace.set_span_in_context(self.root))

    def show(self) -> None:
        """Display the live view (unless --quiet) and follow the spans as they end."""
        if not self.options.quiet:
            try:
                from .display import show_trace

                self._display = show_trace(self.trace)
                self._throttle = _Throttle(self._refresh, REFRESH_INTERVAL)
            except Exception as error:
                _warn(f"could not display the trace: {error!r}")
        if self._throttle is not None or self.options.save:
            self.trace.add_listener(self._on_span_end)

    # -- while spans arrive (any thread) -------------------------------------------------
    def _on_span_end(self, trace: Trace) -> None:
        throttle = self._throttle
        if throttle is not None:
            throttle()
        if self.options.save:
            self._save_when_complete()

    def _refresh(self) -> None:
        display = self._display
        if display is not None:
            try:
                display.refresh()
            except Exception:
                pass

    def _save_when_complete(self) -> None:
        path = self.options.save
        if path is None:
            return
        with self._lock:
            if self._saved or not self.trace.closed or self.trace.running:
                return
            self._saved = True
        try:
            self.trace.save(path)
        except Exception as error:
            _warn(f"could not save the trace to {path}: {error!r}")

    # -- when the cell ends ----------------------------------------------------------------
    def end(self, error: BaseException | None) -> None:
        """Close the root span (failed by `error`, if any) and settle the view."""
        if self._ended:
            return
        self._ended = True
        _reset_context(self._token)
        try:
            if error is not None:
                fail_span(self.root, error)
            self.root.end()
        finally:
            # A span processor of the user's that raises in on_end must not leave the
            # cell's trace half-settled: it is still closed, returned and bound.
            self.trace.closed = True
            _set_last_trace(self.trace)
            if self.options.output:
                self.shell.user_ns[self.options.output] = self.trace
        if self._throttle is not None:
            self._throttle.cancel_pending()
        display = self._display
        if display is not None:
            try:
                display.finish()
            except Exception as exc:
                _warn(f"could not display the trace: {exc!r}")
        if self.options.save:
            self._save_when_complete()

    def close_display(self) -> None:
        """The cell is run again: its old view stops updating and is closed."""
        if self._throttle is not None:
            self._throttle.stop()
        display, self._display = self._display, None
        if display is not None:
            try:
                display.close()
            except Exception:
                pass


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
        self._by_cell: OrderedDict[str, CellRun] = OrderedDict()
        self._parsed: dict[str, CellOptions | None] = {}

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
        return CellOptions(
            name=_unquote(args.name),
            output=output,
            quiet=args.quiet,
            save=_unquote(args.save),
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
            run = CellRun(self.shell, options, options.name or cell_name(body), attributes)
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
        except Exception as error:
            _warn(f"could not start tracing this cell: {error!r}")

    def post_run_cell(self, result: Any) -> None:
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
        except Exception as error:
            _warn(f"could not finish tracing this cell: {error!r}")

    def adopt(self, previous: Any) -> None:
        """Take over the cells `previous` (an unloaded instance) still has open."""
        self._open.update(previous._open)
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
        run = CellRun(self.shell, options, options.name or cell_name(body))
        failure: BaseException | None = None
        try:
            run.show()
            return _run_body(self.shell, body)
        except BaseException as error:
            failure = error
            raise
        finally:
            run.end(failure)


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
    setattr(shell, _SHELL_ATTRIBUTE, magics)
    enable_thread_propagation()
    # Both are opt-in through the environment and idempotent, so a reload adds nothing.
    from .integrations.openai import maybe_instrument_on_load
    from .otlp import current_export, maybe_export_on_load

    maybe_instrument_on_load()
    if current_export() is None:
        maybe_export_on_load()
    return magics


def unload(shell: Any) -> None:
    """Undo `load`; a cell still running keeps its hook until it ends, then it is removed."""
    magics = getattr(shell, _SHELL_ATTRIBUTE, None)
    still_open = isinstance(magics, TraceMagics) and bool(magics._open)
    _remove_hooks(shell, keep_post_run=still_open)
    if still_open:
        assert isinstance(magics, TraceMagics)
        # Runs after the old hook has ended the cell (callbacks run in order).
        shell.events.register("post_run_cell", _RemoveWhenDone(shell, magics))
    shell.magics_manager.magics["cell"].pop(MAGIC_NAME, None)
    shell.magics_manager.registry.pop(TraceMagics.__name__, None)
    disable_thread_propagation()
