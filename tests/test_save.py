"""`%%agenta_trace --save`: the file is written off the span-processing path.

These drive the magic's `CellRun` in this process (the kernel tests in test_magic.py run
the magic itself): a cell whose trace is complete when it ends is saved on the thread
that ends the cell; a span that ends later, on another thread, only signals the save
worker, so its `on_end` does not wait for the file system.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry import trace as otel_trace

from agenta_notebook.io.persist import load
from agenta_notebook.ipython.magic import CellOptions, CellRun, SaveWorker
from agenta_notebook.live import SHELLS, Trace
from agenta_notebook.runtime import get_tracer

#: How long the stand-in file system takes to write a file (seconds).
SLOW_WRITE = 0.5


class SlowDisk:
    """Stands in for `Trace.save`: records the writing thread, waits, then really writes."""

    def __init__(self, real: Callable[[Trace, str | os.PathLike[str]], None]) -> None:
        self.real = real
        self.writers: list[tuple[str, str]] = []  # (thread name, path)
        self.lock = threading.Lock()

    def __call__(self, trace: Trace, path: str | os.PathLike[str]) -> None:
        with self.lock:
            self.writers.append((threading.current_thread().name, str(path)))
        time.sleep(SLOW_WRITE)
        self.real(trace, path)


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowDisk]:
    real = SHELLS.save
    assert real is not None
    disk = SlowDisk(real)
    monkeypatch.setattr(SHELLS, "save", disk)
    yield disk


def new_run(path: Path, saver: SaveWorker, name: str = "cell") -> CellRun:
    shell = SimpleNamespace(user_ns={})
    return CellRun(shell, CellOptions(name=name, quiet=True, save=str(path)), name, saver=saver)


def start_late_span(run: CellRun, name: str = "late") -> otel_trace.Span:
    """A span of the cell's trace that the cell leaves running."""
    return get_tracer().start_span(name, context=otel_trace.set_span_in_context(run.root))


def end_on_a_thread(span: otel_trace.Span) -> tuple[str, float]:
    """End `span` on a new thread; its name and how long `span.end()` took there."""
    result: dict[str, float] = {}

    def end() -> None:
        started = time.perf_counter()
        span.end()
        result["took"] = time.perf_counter() - started

    thread = threading.Thread(target=end, name="user-thread")
    thread.start()
    thread.join()
    return thread.name, result["took"]


def saver_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "agenta_notebook-save"]


def test_a_complete_trace_is_saved_when_the_cell_ends(tmp_path: Path, slow_disk: SlowDisk) -> None:
    path = tmp_path / "complete.json"
    saver = SaveWorker()
    run = new_run(path, saver)
    get_tracer().start_span("step", context=otel_trace.set_span_in_context(run.root)).end()
    run.end(None)
    # Written before `end` returned, by the thread that ended the cell: nothing pending.
    assert slow_disk.writers == [(threading.current_thread().name, str(path))]
    assert sorted(node.name for node in load(path).nodes) == ["cell", "step"]
    assert saver_threads() == []


def test_the_last_span_ending_later_does_not_wait_for_the_file(
    tmp_path: Path, slow_disk: SlowDisk
) -> None:
    path = tmp_path / "late.json"
    saver = SaveWorker()
    run = new_run(path, saver)
    early = start_late_span(run, "early")
    late = start_late_span(run, "late")
    run.end(None)
    assert not path.exists() and slow_disk.writers == [], "spans are still running"
    early.end()  # not the last: nothing to write yet
    assert slow_disk.writers == []

    ending_thread, took = end_on_a_thread(late)

    # `on_end` returned long before a write could have finished on the slow disk...
    assert took < SLOW_WRITE / 2, took
    assert saver.wait(10 * SLOW_WRITE)
    # ...because the worker wrote it, once, and the file holds every span.
    assert slow_disk.writers == [("agenta_notebook-save", str(path))]
    assert ending_thread != "agenta_notebook-save"
    saved = load(path)
    assert sorted(node.name for node in saved.nodes) == ["cell", "early", "late"]
    assert not any(node.running for node in saved.nodes)
    assert saver_threads() == [], "the worker leaves once nothing is pending"


def test_one_worker_saves_many_cells_each_once(tmp_path: Path, slow_disk: SlowDisk) -> None:
    saver = SaveWorker()
    runs = [new_run(tmp_path / f"cell{i}.json", saver, f"cell {i}") for i in range(8)]
    spans = [start_late_span(run) for run in runs]
    for run in runs:
        run.end(None)
    threads = [threading.Thread(target=span.end) for span in spans]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.perf_counter() - started < SLOW_WRITE, "no span waited for a write"
    assert len(saver_threads()) <= 1
    assert saver.wait(30 * SLOW_WRITE)
    assert sorted(slow_disk.writers) == sorted(
        ("agenta_notebook-save", str(tmp_path / f"cell{i}.json")) for i in range(8)
    )
    for i in range(8):
        saved = load(tmp_path / f"cell{i}.json")
        assert sorted(n.name for n in saved.nodes) == [f"cell {i}", "late"]
    assert saver_threads() == []


def test_a_span_ending_while_the_cell_ends_is_saved_exactly_once(tmp_path: Path) -> None:
    # The last span ends on another thread at about the moment the cell ends: whichever
    # side sees the trace complete first saves it, the other does nothing.
    saver = SaveWorker()
    written: list[str] = []
    real = SHELLS.save
    assert real is not None

    def counting(trace: Trace, path: str | os.PathLike[str]) -> None:
        written.append(str(path))
        real(trace, path)

    original, SHELLS.save = SHELLS.save, counting
    try:
        for index in range(30):
            path = tmp_path / f"race{index}.json"
            run = new_run(path, saver)
            late = start_late_span(run)
            ender = threading.Thread(target=late.end)
            ender.start()
            run.end(None)
            ender.join()
            assert saver.wait(10)
            assert written.count(str(path)) == 1, index
            assert sorted(n.name for n in load(path).nodes) == ["cell", "late"]
    finally:
        SHELLS.save = original


def test_a_path_that_cannot_be_written_is_told_to_the_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saver = SaveWorker()
    path = tmp_path / "no such folder" / "trace.json"
    run = new_run(path, saver)
    run.end(None)
    message = capsys.readouterr().err
    assert message.startswith(f"agenta_notebook: could not save the trace to {path}: ")
    assert "No such file or directory" in message
    assert message.count("\n") == 1, "one line, no traceback"

    late_run = new_run(path, saver)
    late = start_late_span(late_run)
    late_run.end(None)
    end_on_a_thread(late)
    assert saver.wait(10)
    waiting, message = capsys.readouterr().err.splitlines()
    assert "still running" in waiting  # said when the cell ended, then the failure
    assert message.startswith(f"agenta_notebook: could not save the trace to {path}: ")


def test_a_save_waiting_for_running_spans_says_so_in_one_line(
    tmp_path: Path, slow_disk: SlowDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 12: a `--save` whose span never ends wrote nothing and said nothing.
    path = tmp_path / "waiting.json"
    saver = SaveWorker()
    run = new_run(path, saver)
    late = start_late_span(run)
    run.end(None)
    told = capsys.readouterr().err.strip().splitlines()
    assert len(told) == 1, told
    assert "1 span(s) of this cell are still running" in told[0] and str(path) in told[0]
    assert not path.exists()
    late.end()  # ...and it is written once the span ends
    assert saver.wait(10 * SLOW_WRITE)
    assert sorted(node.name for node in load(path).nodes) == ["cell", "late"]
    assert capsys.readouterr().err == ""


class InterruptedOnce:
    """A `Trace.save` that Ctrl-C interrupts the first time (an 80k-span cell being
    written when the user presses it), then writes as usual."""

    def __init__(self, real: Callable[[Trace, str | os.PathLike[str]], None]) -> None:
        self.real = real
        self.calls: list[str] = []

    def __call__(self, trace: Trace, path: str | os.PathLike[str]) -> None:
        self.calls.append(threading.current_thread().name)
        if len(self.calls) == 1:
            raise KeyboardInterrupt
        self.real(trace, path)


def test_an_interrupted_save_says_so_and_is_finished_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 12: Ctrl-C while a cell was being finalised skipped the save, with only
    # IPython's "Error in callback".
    real = SHELLS.save
    assert real is not None
    interrupted = InterruptedOnce(real)
    monkeypatch.setattr(SHELLS, "save", interrupted)
    path = tmp_path / "interrupted.json"
    saver = SaveWorker()
    run = new_run(path, saver)
    get_tracer().start_span("step", context=otel_trace.set_span_in_context(run.root)).end()
    run.end(None)  # the interrupt does not escape the end of the cell
    told = capsys.readouterr().err.strip().splitlines()
    assert len(told) == 1 and "interrupted" in told[0] and str(path) in told[0], told
    assert saver.wait(10.0)
    assert interrupted.calls == [threading.current_thread().name, "agenta_notebook-save"]
    assert sorted(node.name for node in load(path).nodes) == ["cell", "step"]
    assert saver_threads() == []


def test_an_interrupt_after_the_worker_was_told_counts_the_save_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ctrl-C lands just after the worker was told to expect this cell (while the "still
    # running" line is printed): the save is handed over again, but counted once, so the
    # worker writes it and leaves instead of waiting for a second save that never comes.
    from agenta_notebook.ipython import magic

    real_tell = magic._tell_user
    told: list[str] = []

    def interrupted_once(message: str) -> None:
        told.append(message)
        if len(told) == 1:
            raise KeyboardInterrupt
        real_tell(message)

    monkeypatch.setattr(magic, "_tell_user", interrupted_once)
    path = tmp_path / "once.json"
    saver = SaveWorker()
    run = new_run(path, saver)
    late = start_late_span(run)
    run.end(None)
    assert "still running" in told[0] and "interrupted" in told[1]
    end_on_a_thread(late)
    assert saver.wait(10.0), "the worker waits for a save counted twice"
    assert sorted(node.name for node in load(path).nodes) == ["cell", "late"]
    assert saver_threads() == []
