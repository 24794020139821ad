"""`%%agenta_trace` in a real IPython kernel, driven by nbclient.

One kernel serves the whole module (`kernel` fixture); a few tests need a fresh one
(Run All stopping at an error, the opt-out of thread propagation). Every check on span
parents and trace ids is made inside the kernel, by a helper that prints a JSON summary
of a trace.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_core.utils import run_sync
from live_kernel import Kernel as LiveKernel
from live_kernel import new_client, started, stdout
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode
from nbval_run import run_nbval

HELPERS = r'''
import asyncio, json, os, threading, time
from concurrent.futures import ThreadPoolExecutor
from opentelemetry import trace as _otel
import agenta_notebook as an
from agenta_notebook import span, record_usage

@span(type="llm")
def call(i=0):
    record_usage(model="gpt-4o-mini", input_tokens=10, output_tokens=5)
    return i

@span(type="llm")
async def acall(i=0):
    await asyncio.sleep(0.001)
    record_usage(model="gpt-4o-mini", input_tokens=10, output_tokens=5)
    return i

@span(type="tool")
def deep(n):
    if n == 0:
        raise ValueError("boom at the bottom")
    return deep(n - 1)

def summary(t=None):
    t = an.last_trace() if t is None else t
    return {
        "name": t.name, "trace_id": f"{t.trace_id:032x}", "running": t.running,
        "tokens": t.totals.total_tokens, "errors": t.totals.errors,
        "root_error": t.root.is_error,
        "nodes": [
            {"name": n.name, "parent": n.parent.name if n.parent else None,
             "parent_id": n.record.parent_span_id, "span_id": n.record.span_id,
             "trace_id": f"{n.record.trace_id:032x}", "error": n.is_error,
             "origin": n.is_error_origin, "running": n.running, "detached": n.detached,
             "status": n.record.status_message}
            for n in t.nodes
        ],
    }

def show(t=None):
    print("SUMMARY " + json.dumps(summary(t)))

def context_leaked():
    return _otel.get_current_span().get_span_context().is_valid

class Recorder:
    """Wraps the real TraceDisplay: records what the magic asks of it and, as "redraw",
    each redraw the display makes of itself (it follows the trace on its own)."""
    def __init__(self, inner, trace):
        self.inner, self.trace, self.events = inner, trace, []
        redraw = inner._redraw
        def recorded_redraw(*, settle):
            self._note("redraw"); redraw(settle=settle)
        inner._redraw = recorded_redraw
    def _note(self, what):
        self.events.append([what, self.trace.span_count, self.trace.running])
    def show(self):
        self._note("show"); self.inner.show()
    def finish(self):
        self._note("finish"); self.inner.finish()
    def close(self):
        self._note("close"); self.inner.close()

RECORDERS = []
import agenta_notebook.views.display as _display
_real_show_trace = _display.show_trace
def record_displays(on=True):
    def recording_show_trace(trace):
        recorder = Recorder(_real_show_trace(trace), trace)
        recorder._note("show")  # show_trace displays the view before returning it
        RECORDERS.append(recorder)
        return recorder
    _display.show_trace = recording_show_trace if on else _real_show_trace
'''

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Kernel(LiveKernel):
    """A live kernel with this module's HELPERS loaded."""

    def summary(self, expression: str = "") -> dict[str, Any]:
        cell = self.run(f"show({expression})")
        text = stdout(cell)
        assert "SUMMARY " in text, f"no summary printed; outputs: {cell.outputs}"
        return json.loads(text.split("SUMMARY ", 1)[1])


def outputs(cell: NotebookNode, kind: str) -> list[NotebookNode]:
    return [o for o in cell.outputs if o.output_type == kind]


def by_name(summary: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [node for node in summary["nodes"] if node["name"] == name]


def plain_traceback(error: NotebookNode) -> list[str]:
    lines = [ANSI.sub("", line) for line in error["traceback"]]
    return [re.sub(r"In\[\d+\]", "In[N]", line) for line in lines]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with started(Kernel, tmp_path_factory.mktemp("magic"), HELPERS) as live:
        yield live


# -- plain synchronous code ------------------------------------------------------------------


def test_sync_cell_nests_spans_and_displays_last_value(kernel: Kernel) -> None:
    cell = kernel.run(
        "%%agenta_trace answer\n"
        "with span('plan', type='workflow'):\n"
        "    with span('agent', type='agent'):\n"
        "        x = call(1) + call(2)\n"
        "x * 10"
    )
    results = outputs(cell, "execute_result")
    assert [r["data"]["text/plain"] for r in results] == ["30"]
    assert outputs(cell, "display_data"), "the trace is shown below the cell"
    summary = kernel.summary()
    assert summary["name"] == "answer"
    parents = {node["name"]: node["parent"] for node in summary["nodes"]}
    assert parents == {"answer": None, "plan": "answer", "agent": "plan", "call": "agent"}
    assert len(by_name(summary, "call")) == 2
    assert summary["tokens"] == 30
    assert {node["trace_id"] for node in summary["nodes"]} == {summary["trace_id"]}
    assert not any(node["detached"] or node["running"] for node in summary["nodes"])
    # the root context does not leak into the next cell
    assert kernel.value("context_leaked()") is False
    assert kernel.value("x") == 3, "variables are set as in a plain cell"


def test_default_name_is_first_line_of_code(kernel: Kernel) -> None:
    kernel.run("%%agenta_trace\n\ny = call(5)   \nz = y")
    assert kernel.summary()["name"] == "y = call(5)"


def test_trailing_semicolon_suppresses_the_value(kernel: Kernel) -> None:
    silent = kernel.run("%%agenta_trace --quiet\n1 + 1;")
    assert outputs(silent, "execute_result") == []
    loud = kernel.run("%%agenta_trace --quiet\n1 + 1")
    assert [r["data"]["text/plain"] for r in outputs(loud, "execute_result")] == ["2"]


def test_magics_inside_the_cell_still_work(kernel: Kernel) -> None:
    cell = kernel.run("%%agenta_trace --quiet\n%time w = call(7)\nprint(w)")
    assert "7" in stdout(cell) and "Wall time" in stdout(cell)
    assert [n["name"] for n in kernel.summary()["nodes"]].count("call") == 1


def test_inside_another_cell_magic(kernel: Kernel) -> None:
    """`%%time` (or `%%capture`) on the first line runs its body, magic line included,
    through IPython's transformer while the cell runs: the magic function traces it."""
    cell = kernel.run("%%time\n%%agenta_trace timed -o timed_run --quiet\ntm = call(11)")
    assert "Wall time" in stdout(cell)
    assert kernel.value("tm") == 11
    assert kernel.value("timed_run.name") == "timed"
    summary = kernel.summary()
    assert summary["name"] == "timed"
    assert [(n["name"], n["parent"]) for n in summary["nodes"]] == [
        ("timed", None),
        ("call", "timed"),
    ]


def test_another_cell_magic_after_it(kernel: Kernel) -> None:
    cell = kernel.run("%%agenta_trace outer --quiet\n\n%%time\nti = call(12)")
    assert "Wall time" in stdout(cell)
    assert kernel.value("ti") == 12
    summary = kernel.summary()
    assert summary["name"] == "outer"
    assert [(n["name"], n["parent"]) for n in summary["nodes"]] == [
        ("outer", None),
        ("call", "outer"),
    ]
    captured = kernel.run("%%agenta_trace --quiet\n%%capture cap\nprint('hidden')\ncall(13)")
    assert stdout(captured) == ""
    assert kernel.value("cap.stdout") == "hidden\n"
    assert [n["name"] for n in kernel.summary()["nodes"]] == ["%%capture cap", "call"]


def test_indented_body_runs_as_without_the_magic(kernel: Kernel) -> None:
    plain = kernel.run("    ind = call(14)\n    ind")
    traced = kernel.run(
        "%%agenta_trace --quiet\n    ind2 = call(14)\n    if ind2:\n        ind2 += 0\n    ind2"
    )
    for cell in (plain, traced):
        assert [r["data"]["text/plain"] for r in outputs(cell, "execute_result")] == ["14"]
    assert by_name(kernel.summary(), "call")


# -- async ----------------------------------------------------------------------------------


def test_top_level_await(kernel: Kernel) -> None:
    cell = kernel.run("%%agenta_trace awaited\nawait asyncio.sleep(0)\nv = await acall(4)\nv + 1")
    assert [r["data"]["text/plain"] for r in outputs(cell, "execute_result")] == ["5"]
    summary = kernel.summary()
    assert summary["name"] == "awaited"
    assert [(n["name"], n["parent"]) for n in summary["nodes"]] == [
        ("awaited", None),
        ("acall", "awaited"),
    ]
    assert kernel.value("context_leaked()") is False


def test_asyncio_gather_children_land_under_their_parents(kernel: Kernel) -> None:
    kernel.run(
        "%%agenta_trace fan-out\n"
        "@span(type='agent')\n"
        "async def worker(i):\n"
        "    await asyncio.sleep(0.01 * (i % 3))\n"
        "    return await acall(i)\n"
        "with span('gather', type='chain'):\n"
        "    got = await asyncio.gather(*(worker(i) for i in range(10)))\n"
        "assert got == list(range(10))"
    )
    summary = kernel.summary()
    workers = by_name(summary, "worker")
    assert len(workers) == 10 and {w["parent"] for w in workers} == {"gather"}
    calls = by_name(summary, "acall")
    assert len(calls) == 10
    assert {c["parent_id"] for c in calls} == {w["span_id"] for w in workers}
    assert summary["tokens"] == 150
    assert kernel.value("context_leaked()") is False


# -- threads --------------------------------------------------------------------------------


def test_thread_pool_children_land_under_the_submitting_span(kernel: Kernel) -> None:
    kernel.run(
        "%%agenta_trace pool\n"
        "with span('batch', type='chain'):\n"
        "    with ThreadPoolExecutor(4) as pool:\n"
        "        done = list(pool.map(call, range(10)))"
    )
    summary = kernel.summary()
    calls = by_name(summary, "call")
    assert len(calls) == 10 and {c["parent"] for c in calls} == {"batch"}
    assert summary["tokens"] == 150


def test_plain_thread_lands_under_the_starting_span(kernel: Kernel) -> None:
    kernel.run(
        "%%agenta_trace threaded\n"
        "with span('starter'):\n"
        "    worker_thread = threading.Thread(target=call, args=(1,))\n"
        "    worker_thread.start()\n"
        "worker_thread.join()"
    )
    summary = kernel.summary()
    assert [(n["name"], n["parent"]) for n in summary["nodes"]] == [
        ("threaded", None),
        ("starter", "threaded"),
        ("call", "starter"),
    ]


def test_pool_reused_by_a_later_cell_does_not_mix_traces(kernel: Kernel) -> None:
    kernel.run("shared_pool = ThreadPoolExecutor(2)")
    kernel.run("%%agenta_trace --quiet -o first\nlist(shared_pool.map(call, range(3)));")
    kernel.run("%%agenta_trace --quiet -o second\nlist(shared_pool.map(call, range(5)));")
    first, second = kernel.summary("first"), kernel.summary("second")
    assert first["trace_id"] != second["trace_id"]
    assert len(by_name(first, "call")) == 3 and len(by_name(second, "call")) == 5
    kernel.run("shared_pool.shutdown()")


# -- errors ---------------------------------------------------------------------------------


def test_error_fails_the_cell_once_with_the_plain_traceback(kernel: Kernel) -> None:
    body = "with span('outer'):\n    deep(3)\n"
    traced = kernel.run("%%agenta_trace failing\n" + body, fails=True)
    plain = kernel.run("# %%agenta_trace failing\n" + body, fails=True)  # commented out
    errors = outputs(traced, "error")
    assert len(errors) == 1, "one traceback, not two"
    assert (errors[0]["ename"], errors[0]["evalue"]) == ("ValueError", "boom at the bottom")
    assert plain_traceback(errors[0]) == plain_traceback(outputs(plain, "error")[0])
    assert "Error in callback" not in stdout(traced)
    assert outputs(traced, "display_data"), "the trace is still shown"
    summary = kernel.summary()
    assert summary["name"] == "failing" and summary["root_error"]
    assert summary["errors"] == 1, "one exception through five frames counts once"
    origins = [n for n in summary["nodes"] if n["origin"]]
    assert [(n["name"], n["parent"]) for n in origins] == [("deep", "deep")]
    assert kernel.value("context_leaked()") is False


def test_error_in_an_async_cell(kernel: Kernel) -> None:
    cell = kernel.run(
        "%%agenta_trace --quiet\nawait acall(1)\nraise RuntimeError('after await')", fails=True
    )
    assert [e["evalue"] for e in outputs(cell, "error")] == ["after await"]
    summary = kernel.summary()
    assert summary["root_error"] and "RuntimeError: after await" in summary["nodes"][0]["status"]
    assert kernel.value("context_leaked()") is False


def test_syntax_error_is_reported_as_usual(kernel: Kernel) -> None:
    cell = kernel.run("%%agenta_trace --quiet\nx = (", fails=True)
    assert [e["ename"] for e in outputs(cell, "error")] == ["SyntaxError"]
    assert kernel.summary()["root_error"]


def test_raised_keyboard_interrupt(kernel: Kernel) -> None:
    cell = kernel.run(
        "%%agenta_trace interrupted\nwith span('long'):\n    raise KeyboardInterrupt", fails=True
    )
    assert [e["ename"] for e in outputs(cell, "error")] == ["KeyboardInterrupt"]
    summary = kernel.summary()
    assert summary["name"] == "interrupted" and summary["root_error"]
    assert by_name(summary, "long")[0]["origin"]


def test_real_interrupt_from_the_frontend(kernel: Kernel) -> None:
    # (ipykernel 7.4 does not interrupt a cell awaiting `asyncio.sleep` on SIGINT, with or
    # without the magic, so only the synchronous case can be driven from here.)
    client = kernel.client
    kc, km = client.kc, client.km
    assert kc is not None and km is not None
    get_iopub, get_shell = run_sync(kc.get_iopub_msg), run_sync(kc.get_shell_msg)
    msg_id = kc.execute(
        "%%agenta_trace stopped\n"
        "with span('waiting'):\n"
        "    print('waiting', flush=True)\n"
        "    time.sleep(60)"
    )
    waiting = False
    while not waiting:  # the cell has opened its span
        msg = get_iopub(timeout=30)
        waiting = (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and "waiting" in msg["content"]["text"]
        )
    time.sleep(0.2)
    run_sync(km.interrupt_kernel)()
    reply = get_shell(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = get_shell(timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] in ("KeyboardInterrupt", "CancelledError")
    idle = False
    while not idle:  # everything the interrupted cell sends has arrived
        msg = get_iopub(timeout=30)
        idle = (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        )
    summary = kernel.summary()
    assert summary["name"] == "stopped" and summary["root_error"]
    assert by_name(summary, "waiting")[0]["error"]
    assert not summary["running"], "every span was ended"
    assert kernel.value("context_leaked()") is False


def test_run_all_stops_at_a_traced_error(tmp_path: Path) -> None:
    client = new_client(tmp_path)
    client.nb.cells = [
        nbformat.v4.new_code_cell(source)
        for source in (
            "%load_ext agenta_notebook",
            "%%agenta_trace\nraise ValueError('stop here')",
            "print('should not run')",
        )
    ]
    with pytest.raises(CellExecutionError, match="stop here"):
        client.execute()
    assert client.nb.cells[2].outputs == []
    assert len(outputs(client.nb.cells[1], "error")) == 1


# -- spans after the cell, consecutive cells, re-runs ------------------------------------------


def test_late_span_is_added_to_its_cell_and_refreshes_the_view(kernel: Kernel) -> None:
    kernel.run("record_displays(True); RECORDERS.clear(); release = threading.Event()")
    kernel.run(
        "%%agenta_trace late -o late\n"
        "def background():\n"
        "    with span('background'):\n"
        "        release.wait(30)\n"
        "        call(1)\n"
        "bg = threading.Thread(target=background)\n"
        "bg.start()"
    )
    during = kernel.summary("late")
    assert during["running"] and by_name(during, "background")[0]["running"]
    assert by_name(during, "call") == []
    kernel.run("%%agenta_trace meanwhile --quiet -o meanwhile\nm = call(2)")
    kernel.run(
        "release.set(); bg.join()\n"
        "deadline = time.monotonic() + 10  # the trailing refresh comes within the interval\n"
        "while RECORDERS[0].events[-1][:1] != ['redraw'] or RECORDERS[0].events[-1][2]:\n"
        "    if time.monotonic() > deadline: break\n"
        "    time.sleep(0.05)"
    )
    after = kernel.summary("late")
    assert not after["running"] and after["tokens"] == 15
    assert [(n["name"], n["parent"]) for n in after["nodes"]] == [
        ("late", None),
        ("background", "late"),
        ("call", "background"),
    ]
    meanwhile = kernel.summary("meanwhile")
    assert [n["name"] for n in meanwhile["nodes"]] == ["meanwhile", "call"]
    events = kernel.value("RECORDERS[0].events")
    kernel.run("record_displays(False)")
    names = [event[0] for event in events]
    assert names[0] == "show" and "finish" in names
    finish = names.index("finish")
    assert events[finish][2] is True, "at the end of the cell a span is still running"
    late_redraws = [e for e in events[finish + 1 :] if e[0] == "redraw"]
    assert late_redraws and late_redraws[-1][2] is False, "the view shows the late span"


def test_set_prices_after_a_cell_updates_its_output(kernel: Kernel) -> None:
    """Rule 15 in a real kernel: the output of a cell already shown is redrawn with the
    prices set afterwards (the static text the notebook keeps, not only the widget)."""
    cell = kernel.run(
        "%%agenta_trace priced_later\n"
        "with span('house call', type='llm'):\n"
        "    record_usage(model='house-model-99', input_tokens=2_000_000, output_tokens=0)"
    )

    def shown_text() -> str:
        return "".join(
            output["data"]["text/plain"]
            for output in cell.outputs
            if output.get("output_type") in ("display_data", "update_display_data")
            and "text/plain" in output.get("data", {})
        )

    assert "1 unpriced" in shown_text()
    try:
        # The redraw comes from the view's timer thread, while this cell is running.
        kernel.run("an.set_prices('house-model-99', input=0.5, output=1); time.sleep(2)")
        assert "unpriced" not in shown_text(), shown_text()
        assert "$1" in shown_text()
    finally:
        kernel.run("an.clear_prices('house-model-99')")


def test_earlier_background_work_never_leaks_into_a_later_cell(kernel: Kernel) -> None:
    kernel.run(
        "%%agenta_trace --quiet -o ticker_trace\n"
        "stop_ticking = threading.Event()\n"
        "def tick():\n"
        "    while not stop_ticking.is_set():\n"
        "        call(0)\n"
        "        time.sleep(0.002)\n"
        "ticker = threading.Thread(target=tick)\n"
        "ticker.start()"
    )
    kernel.run(
        "%%agenta_trace --quiet -o busy\nfor i in range(20):\n    call(i); time.sleep(0.002)"
    )
    kernel.run(
        "%%agenta_trace --quiet -o busy_async\nawait asyncio.gather(*(acall(i) for i in range(5)))"
    )
    kernel.run("stop_ticking.set(); ticker.join()")
    busy, busy_async = kernel.summary("busy"), kernel.summary("busy_async")
    ticker = kernel.summary("ticker_trace")
    assert len(by_name(busy, "call")) == 20 and len(busy["nodes"]) == 21
    assert len(by_name(busy_async, "acall")) == 5 and len(busy_async["nodes"]) == 6
    assert len(by_name(ticker, "call")) >= 2
    assert len({busy["trace_id"], busy_async["trace_id"], ticker["trace_id"]}) == 3
    assert not any(n["detached"] for n in ticker["nodes"])


def test_two_cells_and_a_rerun_get_their_own_traces(kernel: Kernel) -> None:
    kernel.run("record_displays(True); RECORDERS.clear()")
    kernel.run("%%agenta_trace one\ncall(1);")
    first = kernel.summary()
    kernel.run("%%agenta_trace two\ncall(2); call(3);")
    second = kernel.summary()
    kernel.run("%%agenta_trace one\ncall(1);")  # the same cell run again
    rerun = kernel.summary()
    events = kernel.value("[r.events for r in RECORDERS]")
    kernel.run("record_displays(False)")
    assert len({first["trace_id"], second["trace_id"], rerun["trace_id"]}) == 3
    assert [len(t["nodes"]) for t in (first, second, rerun)] == [2, 3, 2]
    # What the magic asked of each view (the views' own redraws left out).
    names = [[event[0] for event in run if event[0] != "redraw"] for run in events]
    assert names[0][-1] == "close", "the re-run closes the cell's previous view"
    assert "close" not in names[1], "another cell's view is left alone"
    assert names[2][-1] == "finish"


def _execute_with_cell_id(kernel: Kernel, code: str, cell_id: str) -> None:
    """Run `code` as JupyterLab does: with the cell's id in the request's metadata."""
    kc = kernel.client.kc
    assert kc is not None
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}}
    message = kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
    kc.shell_channel.send(message)
    get_shell = run_sync(kc.get_shell_msg)
    reply = get_shell(timeout=30)
    while reply["parent_header"].get("msg_id") != message["header"]["msg_id"]:
        reply = get_shell(timeout=30)
    assert reply["content"]["status"] == "ok"


def test_reruns_are_keyed_by_the_cell_id_when_the_frontend_sends_one(kernel: Kernel) -> None:
    kernel.run("record_displays(True); RECORDERS.clear()")
    same_text = "%%agenta_trace keyed\ncall(1);"
    _execute_with_cell_id(kernel, same_text, "cell-a")
    _execute_with_cell_id(kernel, same_text, "cell-b")  # another cell, same text
    _execute_with_cell_id(kernel, "%%agenta_trace 'keyed again'\ncall(2);", "cell-a")  # edited
    events = kernel.value("[[e[0] for e in r.events if e[0] != 'redraw'] for r in RECORDERS]")
    cell_ids = kernel.value(
        "[r.trace.root.record.attributes.get('agenta_notebook.cell_id') for r in RECORDERS]"
    )
    kernel.run("record_displays(False)")
    assert cell_ids == ["cell-a", "cell-b", "cell-a"]
    assert events[0][-1] == "close", "cell-a run again: its old view is closed"
    assert "close" not in events[1], "cell-b has the same text but is another cell"
    assert events[2][-1] == "finish"


def test_live_view_is_refreshed_at_most_every_interval(kernel: Kernel) -> None:
    kernel.run("record_displays(True); RECORDERS.clear()")
    kernel.run(
        "%%agenta_trace steady\n"
        "started = time.monotonic()\n"
        "for i in range(40):\n"
        "    call(i); time.sleep(0.02)\n"
        "elapsed = time.monotonic() - started"
    )
    events = kernel.value("[e[0] for e in RECORDERS[0].events]")
    elapsed = kernel.value("elapsed")
    interval = kernel.value("_display.MIN_INTERVAL")
    kernel.run("record_displays(False)")
    # The display redraws itself (one throttle, in display.py); the magic only settles it.
    redraws = events[: events.index("finish")].count("redraw")
    assert 1 <= redraws <= elapsed / interval + 1, (redraws, elapsed)
    assert events[events.index("finish") + 1] == "redraw", "finish draws the final state"


# -- options --------------------------------------------------------------------------------


def test_output_variable_holds_the_trace(kernel: Kernel) -> None:
    kernel.run("%%agenta_trace stored -o kept\ncall(1);")
    assert kernel.value("type(kept).__name__") == "Trace"
    assert kernel.value("kept is an.last_trace()") is True
    assert kernel.value("kept.name") == "stored"
    assert kernel.value("kept.totals.total_tokens") == 15


def test_output_variable_is_set_when_the_cell_fails(kernel: Kernel) -> None:
    kernel.run("%%agenta_trace -o failed_trace --quiet\ndeep(0)", fails=True)
    assert kernel.value("failed_trace.totals.errors") == 1


def test_quiet_shows_nothing_but_records(kernel: Kernel) -> None:
    cell = kernel.run("%%agenta_trace hush --quiet\nq = call(3)\nprint('printed', q)")
    assert outputs(cell, "display_data") == []
    assert stdout(cell) == "printed 3\n"
    summary = kernel.summary()
    assert summary["name"] == "hush" and summary["tokens"] == 15


def test_quoted_name(kernel: Kernel) -> None:
    kernel.run("%%agenta_trace 'my agent run' --quiet\ncall(1);")
    assert kernel.summary()["name"] == "my agent run"


def test_bad_option_is_a_one_line_usage_error(kernel: Kernel) -> None:
    kernel.run("not_set_by_bad_cell = True")
    cell = kernel.run("%%agenta_trace --bogus\nnot_set_by_bad_cell = False\ncall(1)", fails=True)
    assert outputs(cell, "error") == [], "no traceback"
    assert stdout(cell) == "UsageError: unrecognized arguments: --bogus\n"
    assert kernel.value("not_set_by_bad_cell") is True, "the body did not run"
    missing = kernel.run("%%agenta_trace -o\ncall(1)", fails=True)
    assert stdout(missing) == "UsageError: argument -o/--output: expected one argument\n"
    quote = kernel.run('%%agenta_trace "my run -o r\nnot_set_by_bad_cell = 1', fails=True)
    assert outputs(quote, "error") == []
    assert stdout(quote) == (
        "UsageError: %%agenta_trace: No closing quotation in '\"my run -o r'\n"
    )
    for bad in ("1bad", "''", "class", "a.b"):
        cell = kernel.run(f"%%agenta_trace -o {bad}\nnot_set_by_bad_cell = 2", fails=True)
        assert outputs(cell, "error") == []
        assert stdout(cell).startswith("UsageError: %%agenta_trace: -o needs a variable name")
    assert kernel.value("not_set_by_bad_cell") is True, "no bad cell ran its body"


def test_help_lists_the_options(kernel: Kernel) -> None:
    # What `InteractiveShell.display_page = True` does: the pager prints to the output.
    kernel.run(
        "from IPython.core import page\n"
        "get_ipython().set_hook('show_in_pager', page.as_hook(page.display_page), 90)"
    )
    cell = kernel.run("%%agenta_trace?")
    text = "".join(
        o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in cell.outputs
    )
    text = ANSI.sub("", text)
    for option in (
        "%%agenta_trace [-o VAR] [--quiet] [--save PATH] [--budget DOLLARS]",
        "[--max-tokens N]",
        "--quiet",
        "-o VAR",
    ):
        assert option in text


def test_direct_call_of_the_magic(kernel: Kernel) -> None:
    cell = kernel.run("get_ipython().run_cell_magic('agenta_trace', 'direct', 'd = call(8)\\nd')")
    assert [r["data"]["text/plain"] for r in outputs(cell, "execute_result")] == ["8"]
    summary = kernel.summary()
    assert summary["name"] == "direct" and [n["parent"] for n in summary["nodes"]] == [
        None,
        "direct",
    ]
    failing = kernel.run(
        "get_ipython().run_cell_magic('agenta_trace', '--quiet', 'deep(1)')", fails=True
    )
    assert [e["ename"] for e in outputs(failing, "error")] == ["ValueError"]
    assert kernel.summary()["root_error"]
    assert kernel.value("context_leaked()") is False
    awaiting = kernel.run(
        "get_ipython().run_cell_magic('agenta_trace', '--quiet', 'await asyncio.sleep(0)')",
        fails=True,
    )
    assert outputs(awaiting, "error") == []
    assert stdout(awaiting) == (
        "UsageError: top-level await needs %%agenta_trace on the first line of the cell\n"
    )


def test_save_writes_the_trace_once_complete(kernel: Kernel, tmp_path: Path) -> None:
    pytest.importorskip("agenta_notebook.io.persist", reason="persist.py is not written yet")
    path = tmp_path / "saved.json"
    kernel.run("gate = threading.Event()")
    kernel.run(
        f"%%agenta_trace saved --quiet --save {str(path)!r}\n"
        "def later():\n"
        "    with span('later'):\n"
        "        gate.wait(30)\n"
        "saver = threading.Thread(target=later)\n"
        "saver.start()\n"
        "call(1);"
    )
    assert not path.exists(), "not while a span of the trace is still running"
    kernel.run("gate.set(); saver.join()")
    # Written by the magic's save worker, not by the thread that ended the last span.
    kernel.run("assert get_ipython()._agenta_notebook_magics.saver.wait(30)")
    assert path.exists()
    kernel.run("from agenta_notebook.io.persist import load as load_trace")
    loaded = kernel.value(f"sorted(n.name for n in load_trace({str(path)!r}).nodes)")
    assert loaded == ["call", "later", "saved"]


def test_save_of_a_complete_trace_is_written_when_the_cell_ends(
    kernel: Kernel, tmp_path: Path
) -> None:
    path = tmp_path / "at once.json"
    kernel.run(f"%%agenta_trace at_once --quiet --save {str(path)!r}\ncall(1);")
    # No span outlives the cell: written on the kernel's thread before the cell returned.
    assert path.exists()
    kernel.run("from agenta_notebook.io.persist import load as load_trace")
    loaded = kernel.value(f"sorted(n.name for n in load_trace({str(path)!r}).nodes)")
    assert loaded == ["at_once", "call"]


def test_save_to_a_path_that_cannot_be_written_is_one_line_in_the_cell(
    kernel: Kernel, tmp_path: Path
) -> None:
    path = tmp_path / "missing folder" / "trace.json"
    cell = kernel.run(f"%%agenta_trace --quiet --save {str(path)!r}\nprint('ran'); call(1);")
    assert outputs(cell, "error") == [], "the cell itself succeeded"
    errors = [o["text"] for o in outputs(cell, "stream") if o["name"] == "stderr"]
    assert len(errors) == 1 and errors[0].count("\n") == 1, errors
    assert errors[0].startswith(f"agenta_notebook: could not save the trace to {path}: ")
    assert "No such file or directory" in errors[0]
    assert stdout(cell).startswith("ran\n")
    assert kernel.summary()["tokens"] == 15, "the trace is kept all the same"


# -- loading ----------------------------------------------------------------------------------

COUNT_HOOKS = (
    "(lambda _is_ours: [sum(_is_ours(f) for f in get_ipython().events.callbacks['pre_run_cell']),"
    " sum(_is_ours(f) for f in get_ipython().events.callbacks['post_run_cell']),"
    " sum(_is_ours(f) for f in get_ipython().input_transformers_cleanup),"
    " sum(type(p).__name__ == 'Collector' for p in"
    "     an.get_collector() and an.RUNTIME.tracing.provider"
    "     ._active_span_processor._span_processors)])"
    "(__import__('agenta_notebook.ipython.magic').ipython.magic._is_ours)"
)


def test_load_twice_and_reload_do_not_double_register(kernel: Kernel) -> None:
    assert kernel.value(COUNT_HOOKS) == [1, 1, 1, 1]
    kernel.run("%load_ext agenta_notebook")
    kernel.run("an.load_ipython_extension(get_ipython())")  # even called by hand
    assert kernel.value(COUNT_HOOKS) == [1, 1, 1, 1]
    kernel.run("%reload_ext agenta_notebook")
    kernel.run("%reload_ext agenta_notebook")
    assert kernel.value(COUNT_HOOKS) == [1, 1, 1, 1]
    kernel.run("%%agenta_trace after-reload\ncall(1);")
    summary = kernel.summary()
    assert summary["name"] == "after-reload" and summary["tokens"] == 15
    assert len(summary["nodes"]) == 2


def test_reload_inside_a_traced_cell_still_closes_it(kernel: Kernel) -> None:
    kernel.run("%%agenta_trace reloading\ncall(1)\n%reload_ext agenta_notebook\ncall(2);")
    summary = kernel.summary()
    assert summary["name"] == "reloading" and not summary["running"]
    assert len(by_name(summary, "call")) == 2
    assert kernel.value("context_leaked()") is False
    assert kernel.value(COUNT_HOOKS) == [1, 1, 1, 1]


def test_unload_removes_the_magic(kernel: Kernel) -> None:
    kernel.run("%unload_ext agenta_notebook")
    assert kernel.value(COUNT_HOOKS)[:3] == [0, 0, 0]
    cell = kernel.run("%%agenta_trace\ncall(1)", fails=True)
    assert "UsageError: Cell magic `%%agenta_trace` not found." in stdout(cell)
    kernel.run("%load_ext agenta_notebook")
    assert kernel.value(COUNT_HOOKS) == [1, 1, 1, 1]


def test_thread_propagation_can_be_turned_off(kernel: Kernel) -> None:
    kernel.run("%unload_ext agenta_notebook")
    kernel.run("os.environ['AGENTA_NOTEBOOK_THREADS'] = '0'")
    kernel.run("%load_ext agenta_notebook")
    try:
        assert (
            kernel.value("__import__('agenta_notebook.threads').threads.is_propagating()") is False
        )
        kernel.run(
            "%%agenta_trace --quiet unpropagated\n"
            "t = threading.Thread(target=call); t.start(); t.join()\ncall(2);"
        )
        summary = kernel.summary()
        assert [n["name"] for n in summary["nodes"]] == ["unpropagated", "call"]
    finally:
        kernel.run("%unload_ext agenta_notebook")
        kernel.run("del os.environ['AGENTA_NOTEBOOK_THREADS']")
        kernel.run("%load_ext agenta_notebook")
    assert kernel.value("__import__('agenta_notebook.threads').threads.is_propagating()") is True


# -- the quickstart notebook ----------------------------------------------------------------


def test_quickstart_notebook_validates_with_nbval() -> None:
    """notebooks/quickstart.ipynb in a real kernel under nbval: every output is compared
    (ids and times through tests/nbval_sanitize.cfg), except the live views'."""
    # No key: the OpenAI section talks to the offline stand-in, deterministically.
    run_nbval("quickstart.ipynb", drop_env=("AGENTA_NOTEBOOK_THREADS", "OPENAI_API_KEY"))


def test_output_variable_never_replaces_a_builtin_or_ipythons_own(kernel: Kernel) -> None:
    kernel.run("not_set_by_reserved = True")
    reserved = ("__builtins__", "_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "In")
    reserved += ("Out", "get_ipython", "exit", "quit", "_7", "_i12", "print", "len", "__name__")
    for name in reserved:
        cell = kernel.run(f"%%agenta_trace -o {name}\nnot_set_by_reserved = 2", fails=True)
        assert outputs(cell, "error") == [], name
        assert stdout(cell).startswith(f"UsageError: %%agenta_trace: -o {name} would replace"), (
            stdout(cell)
        )
    assert kernel.value("not_set_by_reserved") is True, "no refused cell ran its body"
    # the session still works: builtins and IPython's variables are untouched
    assert kernel.value("len([1, 2]) + (type(__builtins__).__name__ in ('dict', 'module'))") == 3
    kernel.run("%%agenta_trace -o result_1 --quiet\ncall(1);")  # a plain name is still fine
    assert kernel.value("type(result_1).__name__") == "Trace"


# -- our frames hidden, the root ending with the cell's code (issue 13) ----------------------

DURATIONS_MS = (
    "[(n.record.end_time_ns - n.record.start_time_ns) / 1e6"
    " for n in __import__('agenta_notebook').last_trace().nodes]"
)
FALLING = """\
import agenta_notebook as an

@an.span
def fall(n):
    if n == 0:
        raise ValueError('at the bottom')
    return fall(n - 1)
"""


#: An exception IPython takes half a second to show (its text is slow to make): a root
#: span that ended after the traceback was formatted lasts at least that long.
SLOW_TO_SHOW = """\
import time

class SlowToShow(Exception):
    def __str__(self):
        time.sleep(0.5)
        return "slow to show"
"""


def test_the_root_ends_when_the_failing_code_ends_and_our_frames_are_hidden(
    kernel: Kernel,
) -> None:
    kernel.run(FALLING)
    cell = kernel.run("%%agenta_trace\nfall(2)", fails=True)
    [error] = outputs(cell, "error")
    text = "\n".join(plain_traceback(error))
    assert "fall(n - 1)" in text and "at the bottom" in text
    assert "spans.py" not in text and "wrapper" not in text
    root, *children = kernel.value(DURATIONS_MS)
    assert len(children) == 3 and max(children) <= root
    # the recorded stack trace leaves our frames out too
    recorded = kernel.value(
        "[e.attributes['exception.stacktrace'] for e in"
        " __import__('agenta_notebook').last_trace().nodes[-1].record.events]"
    )
    assert recorded and "fall" in recorded[0] and "spans.py" not in recorded[0]
    # IPython formats the traceback (here: half a second) before the cell's end event;
    # the root ends when the code stopped, before that.
    kernel.run(SLOW_TO_SHOW)
    cell = kernel.run("%%agenta_trace --quiet\nraise SlowToShow()", fails=True)
    assert "slow to show" in "\n".join(plain_traceback(outputs(cell, "error")[0]))
    [root] = kernel.value(DURATIONS_MS)
    assert root < 500, root
    assert kernel.value("__import__('agenta_notebook').last_trace().root.is_error") is True


def test_the_root_of_the_magic_called_directly_ends_with_its_code(kernel: Kernel) -> None:
    kernel.run(SLOW_TO_SHOW)
    kernel.run(
        "get_ipython().run_cell_magic('agenta_trace', '--quiet', 'raise SlowToShow()')",
        fails=True,
    )
    [root] = kernel.value(DURATIONS_MS)
    assert root < 500, root


def test_a_failing_cell_run_from_a_traced_cell_does_not_end_its_root(kernel: Kernel) -> None:
    """`run_cell` (or `%run`) inside a traced cell: the inner cell's traceback is not the
    end of the traced cell's code, which goes on."""
    kernel.run(
        "%%agenta_trace --quiet\n"
        "import time\n"
        "get_ipython().run_cell('1 / 0')\n"
        "with span('after'):\n"
        "    time.sleep(0.05)\n"
    )
    root, after = kernel.value(DURATIONS_MS)
    assert root >= after >= 50, (root, after)
    assert kernel.value("__import__('agenta_notebook').last_trace().root.is_error") is False


def test_loading_the_extension_imports_the_view(tmp_path: Path) -> None:
    """The view's modules (ipywidgets: ~0.1 s on a first import) are imported by
    `%load_ext`, not inside the first traced cell's root span."""
    with started(Kernel, tmp_path, HELPERS) as fresh:
        assert fresh.value("'agenta_notebook.views.widget' in __import__('sys').modules")


def test_a_traceback_shown_by_the_cells_own_code_does_not_end_the_root(kernel: Kernel) -> None:
    kernel.run(
        "%%agenta_trace --quiet\n"
        "import time\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    get_ipython().showtraceback()\n"
        "with span('after'):\n"
        "    time.sleep(0.05)\n"
    )
    root, after = kernel.value(DURATIONS_MS)
    assert root >= after >= 50, (root, after)
