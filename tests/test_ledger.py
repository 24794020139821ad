"""The spend ledger (issue 15): every finished traced cell appends its totals by model to a
local SQLite file; `spend_dataframe()` and ``%agenta_spend`` read it back.

The test suite never writes to the user's data folder: tests/conftest.py points
``AGENTA_NOTEBOOK_LEDGER`` to a folder of the run, and each test here moves the ledger to
its own `tmp_path`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from live_kernel import Kernel, started

import agenta_notebook as an
from agenta_notebook.io import ledger
from agenta_notebook.runtime import LEDGER_ENV, RUNTIME, default_ledger_path

pytestmark = pytest.mark.usefixtures("fresh_runtime")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ledger_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "spend.sqlite3"
    an.set_ledger(path=path)
    yield path
    ledger.flush()


def traced(name: str, calls: list[tuple[str, int, int]]) -> an.Trace:
    """A finished trace with one llm span per (model, input, output) call."""
    with an.trace(name) as result:
        for model, input_tokens, output_tokens in calls:
            with an.span("llm", type="llm"):
                an.record_usage(model=model, input_tokens=input_tokens, output_tokens=output_tokens)
    return result


def cost_sum(traces: list[an.Trace]) -> Decimal:
    return sum((t.totals.cost or Decimal(0) for t in traces), Decimal(0))


# -- the switch ----------------------------------------------------------------------------


def test_the_switch_env_var_and_reset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(LEDGER_ENV)
    assert an.RUNTIME.ledger.path() == default_ledger_path()
    assert default_ledger_path().parent.name.lower().startswith("agenta")
    assert f"spend ledger: on, {default_ledger_path()}" in RUNTIME.describe()
    monkeypatch.setenv(LEDGER_ENV, "off")
    assert RUNTIME.ledger.path() is None
    assert "spend ledger: off (AGENTA_NOTEBOOK_LEDGER=off)" in RUNTIME.describe()
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path))  # a folder: the file inside it
    assert RUNTIME.ledger.path() == tmp_path / "ledger.sqlite3"
    an.set_ledger(path=tmp_path / "mine.db")
    assert RUNTIME.ledger.path() == tmp_path / "mine.db"
    an.set_ledger(enabled=False)
    assert RUNTIME.ledger.path() is None
    assert "spend ledger: off (set_ledger(enabled=False))" in RUNTIME.describe()
    assert ledger.record(traced("off", [("gpt-4o", 1, 1)])) is False
    for bad in ({"enabled": "yes"}, {"path": 3}, {"path": " "}):
        with pytest.raises((TypeError, ValueError), match="set_ledger"):
            an.set_ledger(**bad)  # type: ignore[arg-type]
    assert RUNTIME.ledger.path() is None, "a bad call changed nothing"
    RUNTIME.reset()
    assert RUNTIME.ledger.path() == tmp_path / "ledger.sqlite3"


# -- rows, totals, groupings ------------------------------------------------------------------


def test_rows_hold_the_traces_totals_by_model_and_nothing_else(ledger_file: Path) -> None:
    secret_prompt, secret_answer = "a secret prompt 9f2c", "a secret answer 7d1e"

    @an.span(type="llm")
    def llm(prompt: str) -> str:
        an.record_usage(model="gpt-4o", input_tokens=1234, output_tokens=567)
        return secret_answer

    with an.trace("with text") as first:
        llm(secret_prompt)
        with an.span("other", type="llm"):
            an.record_usage(model="my-local-llama", input_tokens=7, output_tokens=3)
    assert any(secret_prompt in str(n.record.attributes) for n in first.nodes), "captured"
    assert ledger.record(first, notebook="nb.ipynb", cell_id="c1", execution_count=4)
    second = traced("second", [("gpt-4o-mini", 100, 20), ("gpt-4o", 10, 1)])
    assert ledger.record(second, notebook="other.ipynb")
    frame = an.spend_dataframe()
    assert list(frame["trace_name"]) == ["with text", "second"]
    assert str(frame["cost"].dtype) == "Float64"
    assert str(frame["input_tokens"].dtype) == "Int64"
    for row, trace in zip(frame.itertuples(), (first, second), strict=True):
        assert Decimal(row.cost_exact) == trace.totals.cost
        assert row.input_tokens == trace.totals.input_tokens
        assert row.total_tokens == trace.totals.total_tokens
        assert row.calls == trace.totals.model_calls
        assert row.unpriced_calls == trace.totals.unpriced_calls
    assert frame["unpriced_calls"].tolist() == [1, 0]
    assert frame["cell_id"].tolist()[0] == "c1" and frame["execution_count"].tolist()[0] == 4
    by_model = an.spend_dataframe(by="model").set_index("model")
    assert set(by_model.index) == {"openai/gpt-4o", "openai/gpt-4o-mini", "my-local-llama"}
    gpt4o = [m for t in (first, second) for m in t.tree.by_model() if m.model == "openai/gpt-4o"]
    assert len(gpt4o) == 2
    assert Decimal(by_model.loc["openai/gpt-4o", "cost_exact"]) == sum(
        (m.cost or Decimal(0) for m in gpt4o), Decimal(0)
    )
    assert by_model.loc["openai/gpt-4o", "cells"] == 2
    assert by_model.loc["openai/gpt-4o", "input_tokens"] == 1234 + 10
    assert by_model.loc["my-local-llama", "cost_exact"] is pd_na(), "unpriced is not 0"
    assert by_model.loc["my-local-llama", "unpriced_calls"] == 1
    by_notebook = an.spend_dataframe(by="notebook").set_index("notebook")
    assert Decimal(by_notebook.loc["other.ipynb", "cost_exact"]) == second.totals.cost
    ledger.flush()
    raw = b"".join(p.read_bytes() for p in ledger_file.parent.glob(ledger_file.name + "*"))
    assert b"with text" in raw, "the file was read"
    assert secret_prompt.encode() not in raw and secret_answer.encode() not in raw


def pd_na() -> object:
    import pandas as pd

    return pd.NA


def test_since_and_by_day(ledger_file: Path) -> None:
    now = time.time()
    old = traced("old", [("gpt-4o", 10, 10)])
    recent = traced("recent", [("gpt-4o", 20, 20)])
    ledger.record(old, ended_at=now - 10 * 86_400)
    ledger.record(recent, ended_at=now - 3600)
    assert an.spend_dataframe(since="7d")["trace_name"].tolist() == ["recent"]
    assert an.spend_dataframe(since="30m").empty
    assert len(an.spend_dataframe(since="2w")) == 2
    ten_days_ago = time.strftime("%Y-%m-%d", time.localtime(now - 9 * 86_400))
    assert an.spend_dataframe(since=ten_days_ago)["trace_name"].tolist() == ["recent"]
    days = an.spend_dataframe(by="day")
    assert days["day"].tolist() == sorted(
        {time.strftime("%Y-%m-%d", time.localtime(t)) for t in (now - 10 * 86_400, now - 3600)}
    )
    assert Decimal(days["cost_exact"].iloc[-1]) == recent.totals.cost
    for bad in ("yesterday", "7x", ""):
        with pytest.raises(ValueError, match="since"):
            an.spend_dataframe(since=bad)
    with pytest.raises(ValueError, match="by must be one of"):
        an.spend_dataframe(by="week")  # type: ignore[arg-type]


def test_a_fork_writes_its_own_rows(ledger_file: Path) -> None:
    ledger.record(traced("parent", [("gpt-4o", 1, 1)]))
    ledger.flush()
    pid = os.fork()
    if pid == 0:  # the child: its own writer thread, the parent's queue forgotten
        code = 1
        try:
            ledger.record(traced("child", [("gpt-4o", 2, 2)]))
            code = 0 if ledger.flush(30) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ledger.record(traced("parent again", [("gpt-4o", 3, 3)]))
    assert an.spend_dataframe()["trace_name"].tolist() == ["parent", "child", "parent again"]


# -- several processes at once ------------------------------------------------------------------

WRITER_SCRIPT = """
import json, sys
from decimal import Decimal
import agenta_notebook as an
from agenta_notebook.io import ledger
from IPython.core.interactiveshell import InteractiveShell

worker, cells = int(sys.argv[1]), int(sys.argv[2])
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "agenta_notebook")
shell.run_cell("import agenta_notebook as an")
cost, tokens, failed = Decimal(0), 0, 0
for i in range(cells):
    big = worker * 1000 + i
    result = shell.run_cell(
        "%%agenta_trace --quiet\\n"
        f"with an.span('a', type='llm'):\\n"
        f"    an.record_usage(model='gpt-4o', input_tokens={big}, output_tokens={i})\\n"
        f"with an.span('b', type='llm'):\\n"
        f"    an.record_usage(model='gpt-4o-mini', input_tokens={i + 7}, output_tokens=3)\\n"
        f"with an.span('c', type='llm'):\\n"
        f"    an.record_usage(model='no-price-model', input_tokens=5, output_tokens=5)\\n"
    )
    failed += not result.success
    totals = an.last_trace().totals
    cost += totals.cost
    tokens += totals.total_tokens
print("RESULT " + json.dumps({"cost": str(cost), "tokens": tokens, "failed": failed,
                              "flushed": ledger.flush(120)}))
"""


def test_four_processes_writing_200_cells_each_add_up_exactly(tmp_path: Path) -> None:
    """4 IPython shells (real `%%agenta_trace` cells, not kernels: 800 kernel round trips
    would take minutes) write one ledger at once; the totals equal the traces' sums."""
    path = tmp_path / "shared.sqlite3"
    env = {**os.environ, LEDGER_ENV: str(path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(worker), "200"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(4)
    ]
    results = []
    for process in workers:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert "cannot write" not in err, err
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    assert all(r["failed"] == 0 and r["flushed"] for r in results)
    an.set_ledger(path=path)
    cells = an.spend_dataframe()
    assert len(cells) == 800
    expected_cost = sum((Decimal(r["cost"]) for r in results), Decimal(0))
    assert sum(Decimal(text) for text in cells["cost_exact"]) == expected_cost
    assert cells["total_tokens"].sum() == sum(r["tokens"] for r in results)
    by_model = an.spend_dataframe(by="model").set_index("model")
    assert sum(Decimal(t) for t in by_model["cost_exact"].dropna()) == expected_cost
    assert by_model.loc["no-price-model", "unpriced_calls"] == 800
    assert (by_model["cells"] == 800).all()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- a ledger that cannot be written ----------------------------------------------------------

READ_ONLY_SCRIPT = """
import sys, warnings
warnings.simplefilter("always")
import agenta_notebook as an
from agenta_notebook.io import ledger
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "agenta_notebook")
shell.run_cell("import agenta_notebook as an")
ok = 0
for i in range(5):
    result = shell.run_cell(
        "%%agenta_trace --quiet\\nwith an.span('a', type='llm'):\\n"
        "    an.record_usage(model='gpt-4o', input_tokens=3, output_tokens=2)\\nvalue = 40 + 2\\n"
    )
    ok += result.success and shell.user_ns["value"] == 42
    ledger.flush(60)
print(f"OK {ok} DROPPED {ledger.WRITER.dropped} WRITTEN {ledger.WRITER.written}")
"""


def _without_root_override() -> list[str]:
    """As root, file modes do not stop a write: drop the capability that lets it."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only file cannot be made")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override"]


def test_a_read_only_ledger_warns_once_and_no_cell_fails(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    path = folder / "ledger.sqlite3"
    with sqlite3.connect(path) as connection:  # a ledger of earlier days
        connection.execute("CREATE TABLE spend (ended_at REAL)")
    before = path.read_bytes()
    path.chmod(0o444)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        process = subprocess.run(
            [*_without_root_override(), sys.executable, "-c", READ_ONLY_SCRIPT],
            env={**os.environ, LEDGER_ENV: str(path)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert process.returncode == 0, process.stderr
    assert "OK 5 DROPPED 5 WRITTEN 0" in process.stdout, (process.stdout, process.stderr)
    assert process.stderr.count("UserWarning") == 1, process.stderr
    assert process.stderr.count(f"cannot write the spend ledger {path}") == 1, process.stderr
    assert path.read_bytes() == before


def test_a_ledger_in_a_folder_that_cannot_be_made_warns_once(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "ledger.sqlite3"
    an.set_ledger(path=path)
    with pytest.warns(UserWarning, match="cannot write the spend ledger") as caught:
        for index in range(3):
            ledger.record(traced(f"cell {index}", [("gpt-4o", 1, 1)]))
            ledger.flush()
    assert len([w for w in caught if "spend ledger" in str(w.message)]) == 1
    assert str(path) in str(caught[0].message)


# -- in a real kernel, with the stand-in model ---------------------------------------------------

STAND_IN = """
import agenta_notebook as an
from agenta_notebook import demo
an.instrument_openai()
server = demo.start()
client = demo.client(server)
TRACES = []
def ask(model, question):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}]
    )
"""


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "kernel.sqlite3"))
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "spend.ipynb"))
    with started(Kernel, tmp_path, STAND_IN) as live:
        yield live


def test_traced_cells_in_a_kernel_are_written_with_their_totals(
    kernel: Kernel, tmp_path: Path
) -> None:
    kernel.run(
        "%%agenta_trace first -o t1\n"
        "ask('gpt-4o-mini', 'Name a colour')\nask('gpt-4o', 'Name two colours')"
    )
    kernel.run("%%agenta_trace second --quiet -o t2\nask('gpt-4o-mini', 'Name a fruit')")
    kernel.run("untraced = ask('gpt-4o', 'not in any trace')")
    kernel.run("%%agenta_trace third --quiet -o t3\nask('my-local-llama', 'Name a tree')")
    kernel.run(
        "f, m = an.spend_dataframe(), an.spend_dataframe(by='model')\n"
        "CHECK = {'names': f['trace_name'].tolist(), 'notebooks': f['notebook'].tolist(),\n"
        "  'counts': f['execution_count'].tolist(),\n"
        "  'costs': [None if c is an_na else c for c in f['cost_exact'].tolist()],\n"
        "  'expected': [None if t.totals.cost is None else str(t.totals.cost)\n"
        "               for t in (t1, t2, t3)],\n"
        "  'tokens': f['total_tokens'].tolist(),\n"
        "  'expected_tokens': [t.totals.total_tokens for t in (t1, t2, t3)],\n"
        "  'unpriced': f['unpriced_calls'].tolist(),\n"
        "  'models': sorted(m['model'].tolist()), 'model_calls': int(m['calls'].sum())}".replace(
            "an_na", "__import__('pandas').NA"
        )
    )
    check = kernel.value("CHECK")
    assert check["names"] == ["first", "second", "third"]
    assert check["notebooks"] == [str(tmp_path / "spend.ipynb")] * 3
    assert check["counts"] == sorted(check["counts"]) and None not in check["counts"]
    assert [None if c is None else Decimal(c) for c in check["costs"]] == [
        None if c is None else Decimal(c) for c in check["expected"]
    ]
    assert check["costs"][0] is not None and check["costs"][2] is None
    assert check["tokens"] == check["expected_tokens"]
    assert check["unpriced"] == [0, 0, 1]
    assert check["models"] == ["my-local-llama", "openai/gpt-4o", "openai/gpt-4o-mini"]
    assert check["model_calls"] == 4
    shown = kernel.run("%agenta_spend --by model --since 1h")
    html = "".join(o.get("data", {}).get("text/html", "") for o in shown.outputs)
    assert "openai/gpt-4o-mini" in html and "my-local-llama" in html and "bar" in html
    shown = kernel.run("%agenta_spend")
    html = "".join(o.get("data", {}).get("text/html", "") for o in shown.outputs)
    assert time.strftime("%Y-%m-%d") in html or "day" in html


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--by week", "--by must be one of model, notebook, day, not 'week'"),
        ("--since yesterday", "'yesterday' is neither a time ago"),
        ("--since", "expected one argument"),
        ("--frobnicate", "unrecognized arguments"),
    ],
)
def test_bad_spend_options_are_usage_errors(line: str, message: str) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "agenta_notebook")
    try:
        with pytest.raises(UsageError, match=message):
            shell.run_line_magic("agenta_spend", line)
    finally:
        shell.run_line_magic("unload_ext", "agenta_notebook")


KERNEL_CELL = """%%agenta_trace --quiet
with an.span('a', type='llm'):
    an.record_usage(model='gpt-4o', input_tokens={big}, output_tokens={i})
with an.span('b', type='llm'):
    an.record_usage(model='no-price-model', input_tokens=5, output_tokens=5)
"""
#: After each cell (after the magic's own hook): keep the trace it made.
KEEP_TRACES = """%load_ext agenta_notebook
import agenta_notebook as an
TRACES = {}
def _keep(result):
    trace = an.last_trace()
    if trace is not None:
        TRACES[trace.trace_id] = trace
get_ipython().events.register("post_run_cell", _keep)
"""


def _drive_kernel(worker: int, cells: int, results: dict[int, dict[str, str]]) -> None:
    """One kernel running `cells` traced cells, as fast as a frontend sends them."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)

        def run(code: str, **kwargs: object) -> dict[str, object]:
            reply: dict[str, object] = client.execute_interactive(
                code, output_hook=lambda _msg: None, timeout=120, **kwargs
            )["content"]
            assert reply["status"] == "ok", reply
            return reply

        run(KEEP_TRACES)
        for i in range(cells):
            run(KERNEL_CELL.format(big=worker * 1000 + i, i=i))
        reply = run(
            "from agenta_notebook.io import ledger as _ledger\nFLUSHED = _ledger.flush(120)",
            user_expressions={
                "cost": "str(sum(t.totals.cost for t in TRACES.values()))",
                "tokens": "sum(t.totals.total_tokens for t in TRACES.values())",
                "traces": "len(TRACES)",
                "flushed": "FLUSHED",
            },
        )
        values = reply["user_expressions"]
        assert isinstance(values, dict)
        results[worker] = {name: v["data"]["text/plain"] for name, v in values.items()}
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_four_kernels_writing_200_cells_each_then_agenta_spend_adds_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 real kernels (ipykernel, driven as a frontend drives them) write one ledger at
    once; `%agenta_spend` in a fifth kernel shows the exact sum of the traces' totals."""
    import threading

    path = tmp_path / "kernels.sqlite3"
    monkeypatch.setenv(LEDGER_ENV, str(path))
    results: dict[int, dict[str, str]] = {}
    threads = [
        threading.Thread(target=_drive_kernel, args=(worker, 200, results)) for worker in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    assert sorted(results) == [0, 1, 2, 3], "every kernel ran its 200 cells"
    assert all(r["flushed"] == "True" and r["traces"] == "200" for r in results.values())
    expected = sum((Decimal(r["cost"].strip("'")) for r in results.values()), Decimal(0))
    tokens = sum(int(r["tokens"]) for r in results.values())
    an.set_ledger(path=path)
    cells = an.spend_dataframe()
    assert len(cells) == 800
    assert sum(Decimal(text) for text in cells["cost_exact"]) == expected
    assert cells["total_tokens"].sum() == tokens
    with started(Kernel, tmp_path) as reader:
        shown = reader.run("%agenta_spend --by model --since 1h")
    page = "".join(o.get("data", {}).get("text/html", "") for o in shown.outputs)
    assert f"total ${format(expected, 'f')} + 800 unpriced calls" in page, page[-400:]
    assert page.count("<td>800</td>") >= 2, "each model: 800 cells, 800 calls"


# -- review fixes ---------------------------------------------------------------------------


def test_sums_are_exact_whatever_the_notebooks_decimal_context(ledger_file: Path) -> None:
    import decimal

    traces = [traced(f"cell {i}", [("gpt-4o", 12_345, 6_789)]) for i in range(3)]
    for trace in traces:
        ledger.record(trace)
    expected = cost_sum(traces)
    assert len(expected.as_tuple().digits) > 4  # so that 4 digits would round it
    with decimal.localcontext() as context:
        context.prec = 4  # what a notebook may set for its own sums
        for by in ("day", "model", "notebook"):
            frame = an.spend_dataframe(by=by)  # type: ignore[arg-type]
            assert Decimal(frame["cost_exact"].iloc[0]) == expected, by
        html = ledger.spend_html(an.spend_dataframe(by="day"), "day", ledger_file)
        assert f"total ${format(expected, 'f')}" in html


def _written_after(count: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ledger.WRITER.written >= count:
            return True
        time.sleep(0.05)
    return False


def test_a_cell_is_written_once_its_trace_is_complete_and_the_shell_idle(
    ledger_file: Path,
) -> None:
    """Rows are built from the whole trace, off the next cell's time: a trace with a span
    still running, or a shell running a cell, waits (a flush writes at once)."""
    from opentelemetry import trace as otel_trace

    ledger.flush()
    written = ledger.WRITER.written
    with an.trace("background") as trace:
        late = otel_trace.get_tracer("tests.ledger").start_span("late")  # left running
    assert trace.running
    ledger.record(trace)
    assert not _written_after(written + 1, 4 * ledger.POLL_SECONDS)
    late.set_attributes(
        {
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 1_000,
            "gen_ai.usage.output_tokens": 100,
            "gen_ai.operation.name": "chat",
        }
    )
    late.end()
    assert _written_after(written + 1, 10)
    frame = an.spend_dataframe()
    row = frame[frame["trace_name"] == "background"].iloc[0]
    assert Decimal(row["cost_exact"]) == trace.totals.cost  # the late call is counted

    ledger.WRITER.shell_busy()
    try:
        ledger.record(traced("while busy", [("gpt-4o", 10, 10)]))
        assert not _written_after(written + 2, 4 * ledger.POLL_SECONDS)
    finally:
        ledger.WRITER.shell_idle()
    assert _written_after(written + 2, 10)


def test_paths_that_cannot_name_a_file_and_folders_without_an_extension(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="set_ledger"):
        an.set_ledger(path=str(tmp_path / "a\0b.sqlite3"))
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "not-made-yet" / "ledgers"))
    assert RUNTIME.ledger.path() == tmp_path / "not-made-yet" / "ledgers" / "ledger.sqlite3"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    an.set_ledger(path="~/spend.sqlite3")
    assert RUNTIME.ledger.path() == home / "spend.sqlite3"
    ledger.record(traced("one", [("gpt-4o", 10, 10)]))
    assert ledger.flush()
    an.set_ledger(path=tmp_path / "other.sqlite3")
    frame = an.spend_dataframe(path="~/spend.sqlite3")
    assert list(frame["trace_name"]) == ["one"]
    assert list(an.spend_dataframe(path="~")["trace_name"]) == []  # the folder's ledger.sqlite3


# -- the budget of each cell (issue 15) ---------------------------------------------------------

#: The ledger's table as the first version wrote it (before the budget columns).
OLD_SCHEMA = """
CREATE TABLE spend (
    ended_at REAL NOT NULL, notebook TEXT, cell_id TEXT, execution_count INTEGER,
    trace_name TEXT NOT NULL, trace_id TEXT NOT NULL, model TEXT, calls INTEGER NOT NULL,
    input_tokens INTEGER, output_tokens INTEGER, total_tokens INTEGER, cost TEXT,
    unpriced_calls INTEGER NOT NULL, errors INTEGER
);
CREATE INDEX spend_ended_at ON spend (ended_at);
INSERT INTO spend VALUES (1700000000.5, 'old.ipynb', 'c0', 1, 'old cell', 'aa01', NULL,
    2, 30, 10, 40, '0.0012', 0, 0);
INSERT INTO spend VALUES (1700000000.5, 'old.ipynb', 'c0', 1, 'old cell', 'aa01',
    'openai/gpt-4o', 2, 30, 10, 40, '0.0012', 0, NULL);
"""


def budgeted(name: str, budget: Decimal | None, *, refuse: bool) -> an.Trace:
    """A finished trace of two calls with `budget` (dollars), a request refused after
    them when `refuse` (what the guards do before each request)."""
    from agenta_notebook.budget import check

    with an.trace(name, budget=budget) as result:
        for _ in range(2):
            with an.span("llm", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=20)
        if refuse:
            with pytest.raises(an.BudgetExceeded), an.span("step"):
                check(call="the third call")
    return result


def test_each_cell_row_holds_its_budget(ledger_file: Path) -> None:
    one = traced("one", [("gpt-4o", 100, 20)])
    cost = one.totals.cost
    assert cost is not None
    plain = traced("plain", [("gpt-4o", 100, 20)])
    stopped = budgeted("stopped", cost * 2, refuse=True)
    room = budgeted("room", cost * 10, refuse=False)
    with an.trace("tokens", max_tokens=50) as tokens, an.span("llm", type="llm"):
        an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=20)
    for trace in (plain, stopped, room, tokens):
        assert ledger.record(trace)
    frame = an.spend_dataframe()
    assert {c: str(frame[c].dtype) for c in ("budget", "max_tokens")} == {
        "budget": "Float64",
        "max_tokens": "Int64",
    }
    assert str(frame["budget_reached"].dtype) == str(frame["budget_refused"].dtype) == "boolean"
    rows = {row["trace_name"]: row for row in frame.to_dict("records")}
    assert all(pd_isna(rows["plain"][c]) for c in ("budget", "max_tokens", "budget_reached"))
    assert pd_isna(rows["plain"]["budget_refused"])
    assert rows["stopped"]["budget"] == float(cost * 2) and pd_isna(rows["stopped"]["max_tokens"])
    assert rows["stopped"]["budget_reached"] is True and rows["stopped"]["budget_refused"] is True
    assert rows["room"]["budget"] == float(cost * 10)
    assert rows["room"]["budget_reached"] is False and rows["room"]["budget_refused"] is False
    assert pd_isna(rows["tokens"]["budget"]) and rows["tokens"]["max_tokens"] == 50
    assert rows["tokens"]["budget_reached"] is True and rows["tokens"]["budget_refused"] is False
    ledger.flush()
    with sqlite3.connect(ledger_file) as connection:
        exact = connection.execute(
            "SELECT budget FROM spend WHERE trace_name = 'stopped' AND model IS NULL"
        ).fetchall()
        by_model = connection.execute(
            "SELECT COUNT(*) FROM spend WHERE model IS NOT NULL AND budget IS NOT NULL"
        ).fetchone()
    assert exact == [(format(cost * 2, "f"),)], "the dollars are exact text"
    assert by_model == (0,), "the budget is the cell's, not its models'"


def pd_isna(value: object) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_a_ledger_of_the_old_schema_is_read_then_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SCHEMA)
    connection.close()
    # Read as it is (another ledger's path): no budget, and the file is not changed.
    old = an.spend_dataframe(path=path)
    assert old["trace_name"].tolist() == ["old cell"]
    assert old["cost_exact"].tolist() == ["0.0012"]
    assert pd_isna(old["budget"].iloc[0]) and pd_isna(old["budget_refused"].iloc[0])
    with sqlite3.connect(path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(spend)")]
    connection.close()
    assert "budget" not in columns
    # Written by this version: the columns are added, the old rows kept.
    an.set_ledger(path=path)
    one = traced("one", [("gpt-4o", 100, 20)])
    assert one.totals.cost is not None
    assert ledger.record(budgeted("new cell", one.totals.cost, refuse=True))
    frame = an.spend_dataframe()
    assert frame["trace_name"].tolist() == ["old cell", "new cell"]
    assert frame["cost_exact"].iloc[0] == "0.0012" and frame["calls"].iloc[0] == 2
    assert pd_isna(frame["budget"].iloc[0]) and pd_isna(frame["budget_reached"].iloc[0])
    assert frame["budget"].iloc[1] == float(one.totals.cost)
    assert bool(frame["budget_refused"].iloc[1]) is True
    with sqlite3.connect(path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(spend)")]
        count = connection.execute("SELECT COUNT(*) FROM spend").fetchone()
    connection.close()
    assert columns[-4:] == ["budget", "max_tokens", "budget_reached", "budget_refused"]
    assert count == (2 + 2,), "the old cell's two rows and the new cell's two"
    by_model = an.spend_dataframe(by="model").set_index("model")
    assert by_model.loc["openai/gpt-4o", "cells"] == 2
