"""Fork safety: a child forked inside a traced block while threads make spans never hangs.

Each loop runs in its own interpreter under a generous timeout, so that a hang fails the
test instead of blocking the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORK_LOOP = textwrap.dedent(
    """
    import contextvars
    import multiprocessing
    import os
    import sys
    import threading
    import time

    import agenta_notebook as an
    from agenta_notebook.views.display import TraceDisplay

    FORKS = 60
    CHILD_TIMEOUT = 5.0

    def busy(stop):
        while not stop.is_set():
            with an.span("busy", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=3, output_tokens=2)
            time.sleep(0.002)  # busy, but the trace stays small enough to fork quickly

    def child(queue):
        # spans inside the parent's traced block, then a traced block of its own
        for _ in range(20):
            with an.span("in child"):
                an.record_usage(model="gpt-4o", input_tokens=1)
        with an.trace("child's own") as own:
            with an.span("step"):
                an.record_usage(model="gpt-4o", input_tokens=5)
        queue.put((own.totals.input_tokens, len(an.RUNTIME.tracing.collector.traces())))

    fork = multiprocessing.get_context("fork")
    with an.trace("parent") as parent:
        shown = TraceDisplay(parent, widget=False)  # redraws from a timer thread
        stop = threading.Event()
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(busy, stop))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        queue = fork.Queue()
        hung = 0
        for _ in range(FORKS):
            process = fork.Process(target=child, args=(queue,))
            process.start()
            process.join(CHILD_TIMEOUT)
            if process.is_alive():
                hung += 1
                process.kill()
                process.join()
                continue
            assert process.exitcode == 0, process.exitcode
            tokens, kept = queue.get(timeout=CHILD_TIMEOUT)
            # the child's own trace is whole; the parent's traces are not in the child
            assert (tokens, kept) == (5, 1), (tokens, kept)
        stop.set()
        for thread in threads:
            thread.join()
    shown.finish()
    assert parent.totals.input_tokens > 0
    assert not parent.running
    print(f"hung {hung} of {FORKS}")
    sys.exit(1 if hung else 0)
    """
)


def test_fork_inside_traced_block_with_busy_threads_never_hangs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORK_LOOP],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hung 0 of 60" in done.stdout


HELD_AT_FORK = textwrap.dedent(
    """
    import multiprocessing
    import threading

    import agenta_notebook as an

    def child():
        with an.span("in the parent's trace"):
            pass
        with an.trace("own") as own:
            with an.span("step"):
                pass
        assert len(own.nodes) == 2

    with an.trace("parent") as parent:
        held, release = threading.Event(), threading.Event()

        def hold():
            # what a span ending on another thread does at the moment of the fork
            with parent._lock:
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(20)
        hung = process.is_alive()
        if hung:
            process.kill()
            process.join()
        release.set()
        holder.join()
    print("hung" if hung else f"exit {process.exitcode}")
    """
)


def test_a_child_forked_while_a_trace_lock_is_held_does_not_hang() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELD_AT_FORK], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "exit 0", done.stdout + done.stderr
