"""No span is lost, whoever made the tracer provider (issue 10).

The collector must see the spans of every OpenTelemetry SDK `TracerProvider` in the
process (made before or after the collector was installed, global or private), without
changing what those providers export, and without holding on to the global provider in
a way that stops a later library (Agenta's `ag.init()`, `logfire.configure()`) from
installing its own. The API's global provider is set once per process, so every scenario
runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices

# Printed by every scenario: the trace as (name, parent name, detached) rows.
PRELUDE = """
import json, logging
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class Logged(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


logged = Logged()
logging.getLogger("opentelemetry").addHandler(logged)


def provider_with_exporter():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def rows(t):
    return [
        [n.name, n.parent.name if n.parent is not None else None, n.detached]
        for n in t.nodes
    ]


def exported(exporter):
    return sorted(s.name for s in exporter.get_finished_spans())


def overriding():
    return any("Overriding" in m for m in logged.messages)
"""


def run_python(code: str) -> dict[str, Any]:
    """Run PRELUDE + `code` in a fresh interpreter; it prints one JSON object last."""
    completed = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_private_provider_made_after_load_is_collected_and_keeps_its_exporter() -> None:
    result = run_python(
        """
        import agenta_notebook as an
        from agenta_notebook import runtime

        an.get_collector()  # what %load_ext does
        provider, exporter = provider_with_exporter()  # never made global
        tracer = provider.get_tracer("an.sdk")
        with tracer.start_as_current_span("outside"):
            pass
        with an.trace("cell") as t:
            with tracer.start_as_current_span("sdk call") as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                span.set_attribute("gen_ai.usage.input_tokens", 11)
                span.set_attribute("gen_ai.usage.output_tokens", 4)
                with an.span("ours inside"):
                    pass
        processors = provider._active_span_processor._span_processors
        print(json.dumps({
            "rows": rows(t),
            "tokens": t.totals.total_tokens,
            "exported": exported(exporter),
            "collector_first": processors[0] is an.get_collector(),
            "attached": provider in runtime.attached_providers(),
            "global_untouched": trace.get_tracer_provider() is not provider,
        }))
        """
    )
    assert result["rows"] == [
        ["cell", None, False],
        ["sdk call", "cell", False],
        ["ours inside", "sdk call", False],
    ]
    assert result["tokens"] == 15
    # Its exporter gets exactly the spans it made, as without us.
    assert result["exported"] == ["outside", "sdk call"]
    assert result["collector_first"] and result["attached"] and result["global_untouched"]


def test_private_provider_made_before_load_is_found() -> None:
    result = run_python(
        """
        provider, exporter = provider_with_exporter()  # an SDK's private provider
        tracer = provider.get_tracer("an.sdk")

        import agenta_notebook as an

        with an.trace("cell") as t:
            with tracer.start_as_current_span("sdk span"):
                with an.span("ours"):
                    pass
        print(json.dumps({"rows": rows(t), "exported": exported(exporter)}))
        """
    )
    assert result["rows"] == [
        ["cell", None, False],
        ["sdk span", "cell", False],
        ["ours", "sdk span", False],
    ]
    assert result["exported"] == ["sdk span"]


def test_a_library_setting_its_provider_after_load_behaves_as_without_us() -> None:
    # `ag.init()` and `logfire.configure()` build a provider and set it global. After
    # the extension loaded, that must succeed with no "Overriding" warning, and the
    # library's exporter must get the spans of instrumentations, whenever they took
    # their tracer (before the extension, between, after the library), and ours.
    result = run_python(
        """
        early = trace.get_tracer("instrumentation.early")  # at import time: a proxy

        import agenta_notebook as an

        an.get_collector()
        between = trace.get_tracer("instrumentation.between")
        before = {
            "sdk": isinstance(trace.get_tracer_provider(), TracerProvider),
            "proxy": isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider),
        }
        with an.trace("before the library") as t0:
            with between.start_as_current_span("instrumented 0"):
                pass

        library, exporter = provider_with_exporter()
        trace.set_tracer_provider(library)  # what ag.init() does
        set_quietly = not overriding() and trace.get_tracer_provider() is library
        late = trace.get_tracer("instrumentation.late")

        with an.trace("cell") as t:
            with early.start_as_current_span("instrumented 1"):
                with between.start_as_current_span("instrumented 2"):
                    with late.start_as_current_span("instrumented 3"):
                        with an.span("ours", type="llm"):
                            an.record_usage(input_tokens=3, output_tokens=2)

        # A second library after that is refused, exactly as it would be without us.
        second, second_exporter = provider_with_exporter()
        trace.set_tracer_provider(second)
        print(json.dumps({
            "before": before,
            "before_rows": rows(t0),
            "set_quietly": set_quietly,
            "rows": rows(t),
            "tokens": t.totals.total_tokens,
            "exported": exported(exporter),
            "second_refused": overriding() and trace.get_tracer_provider() is library,
        }))
        """
    )
    # Code that checks for an SDK provider still finds one before the library came.
    assert result["before"]["sdk"]
    assert result["before_rows"] == [
        ["before the library", None, False],
        ["instrumented 0", "before the library", False],
    ]
    assert result["set_quietly"]
    assert result["rows"] == [
        ["cell", None, False],
        ["instrumented 1", "cell", False],
        ["instrumented 2", "instrumented 1", False],
        ["instrumented 3", "instrumented 2", False],
        ["ours", "instrumented 3", False],
    ]
    assert result["tokens"] == 5
    # The library's exporter got the whole cell (our root and span included), and
    # nothing from before it existed.
    assert result["exported"] == sorted(
        ["cell", "instrumented 1", "instrumented 2", "instrumented 3", "ours"]
    )
    assert result["second_refused"]


def test_a_library_that_waits_for_an_unconfigured_global_installs_its_own() -> None:
    # OpenLLMetry and Langfuse install their provider only when the global one is still
    # the API's proxy; otherwise they add their processor to the one they find.
    result = run_python(
        """
        import agenta_notebook as an

        an.get_collector()
        current = trace.get_tracer_provider()
        if isinstance(current, trace.ProxyTracerProvider):
            library, exporter = provider_with_exporter()
            trace.set_tracer_provider(library)
        else:
            library = current
            exporter = InMemorySpanExporter()
            library.add_span_processor(SimpleSpanProcessor(exporter))
        with an.trace("cell") as t:
            with trace.get_tracer("instrumentation").start_as_current_span("call"):
                pass
        print(json.dumps({
            "own_provider": trace.get_tracer_provider() is library
            and library is not current,
            "warned": overriding(),
            "rows": rows(t),
            "exported": exported(exporter),
        }))
        """
    )
    assert result["own_provider"] and not result["warned"]
    assert result["rows"] == [["cell", None, False], ["call", "cell", False]]
    assert result["exported"] == ["call", "cell"]


def test_spans_of_three_providers_nest_under_one_root() -> None:
    result = run_python(
        """
        private_before, exporter_before = provider_with_exporter()

        import agenta_notebook as an

        an.get_collector()
        library, library_exporter = provider_with_exporter()
        trace.set_tracer_provider(library)
        private_after, exporter_after = provider_with_exporter()

        with an.trace("cell") as t:
            with an.span("step", type="chain"):
                with private_before.get_tracer("a").start_as_current_span("a"):
                    with trace.get_tracer("b").start_as_current_span("b"):
                        tracer = private_after.get_tracer("c")
                        with tracer.start_as_current_span("c") as span:
                            span.set_attribute("gen_ai.operation.name", "chat")
                            span.set_attribute("gen_ai.usage.input_tokens", 7)
                            span.set_attribute("gen_ai.usage.output_tokens", 1)
        print(json.dumps({
            "rows": rows(t),
            "tokens": t.totals.total_tokens,
            "calls": t.totals.model_calls,
            "exported": [
                exported(exporter_before), exported(library_exporter), exported(exporter_after)
            ],
        }))
        """
    )
    assert result["rows"] == [
        ["cell", None, False],
        ["step", "cell", False],
        ["a", "step", False],
        ["b", "a", False],
        ["c", "b", False],
    ]
    assert result["tokens"] == 8 and result["calls"] == 1
    # Each provider exported what it made: ours (root, step) went to the global one.
    assert result["exported"] == [["a"], ["b", "cell", "step"], ["c"]]


def test_a_global_wrapper_around_an_sdk_provider_is_followed_without_warning() -> None:
    # Logfire sets a provider of its own class that wraps an SDK provider.
    result = run_python(
        """
        import warnings


        class WrappingProvider(trace.TracerProvider):
            def __init__(self, provider):
                self.provider = provider

            def get_tracer(self, *args, **kwargs):
                return self.provider.get_tracer(*args, **kwargs)


        inner, exporter = provider_with_exporter()
        trace.set_tracer_provider(WrappingProvider(inner))

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import agenta_notebook as an

            with an.trace("cell") as t:
                with trace.get_tracer("instrumentation").start_as_current_span("call"):
                    with an.span("ours"):
                        pass
        print(json.dumps({
            "warned": [str(w.message) for w in caught if "agenta_notebook" in str(w.message)],
            "rows": rows(t),
            "exported": exported(exporter),
        }))
        """
    )
    assert result["warned"] == []
    assert result["rows"] == [
        ["cell", None, False],
        ["call", "cell", False],
        ["ours", "call", False],
    ]
    assert result["exported"] == ["call", "cell", "ours"]


def test_detach_leaves_a_provider_bare_and_attach_everywhere_reaches_all() -> None:
    result = run_python(
        """
        from opentelemetry.sdk.trace import SpanProcessor
        import agenta_notebook as an
        from agenta_notebook import runtime


        class Names(SpanProcessor):
            def __init__(self):
                self.names = []

            def on_end(self, span):
                self.names.append(span.name)


        bare, bare_exporter = provider_with_exporter()
        runtime.detach(bare)
        names = Names()
        runtime.attach_everywhere(names)
        runtime.attach_everywhere(names)  # once per provider
        other, _ = provider_with_exporter()
        with an.trace("cell") as t:
            with bare.get_tracer("bare").start_as_current_span("bare span"):
                pass
            with other.get_tracer("other").start_as_current_span("other span"):
                pass
        processors = bare._active_span_processor._span_processors
        print(json.dumps({
            "bare_processors": [type(p).__name__ for p in processors],
            "rows": rows(t),
            "names": names.names,
        }))
        """
    )
    assert result["bare_processors"] == ["SimpleSpanProcessor"]
    # The bare provider's span is not collected: its child-of-root link is lost.
    assert result["rows"] == [["cell", None, False], ["other span", "cell", False]]
    assert result["names"] == ["other span", "cell"]


def test_threads_carry_the_span_without_the_threading_instrumentation() -> None:
    # Thread propagation is our own: it must work with the official instrumentation
    # package absent (it is no dependency of ours any more).
    result = run_python(
        """
        import sys, threading
        from concurrent.futures import ThreadPoolExecutor

        sys.modules["opentelemetry.instrumentation.threading"] = None  # import fails
        import agenta_notebook as an
        from agenta_notebook import threads

        assert threads.enable_thread_propagation()


        def work(name):
            with an.span(name):
                pass


        def traced(label):
            with an.trace(label) as t:
                with an.span("starter"):
                    thread = threading.Thread(target=work, args=("in thread",))
                    thread.start()
                    timer = threading.Timer(0.01, work, args=("in timer",))
                    timer.start()
                    with ThreadPoolExecutor(2) as pool:
                        list(pool.map(work, ["pool 1", "pool 2"]))
                thread.join()
                timer.join()
            return sorted(rows(t))


        on = traced("on")
        propagating = threads.is_propagating()
        threads.disable_thread_propagation()
        off = traced("off")
        print(json.dumps({"on": on, "off": off, "propagating": propagating,
                          "after": threads.is_propagating()}))
        """
    )
    assert result["propagating"] and not result["after"]
    assert result["on"] == sorted(
        [
            ["on", None, False],
            ["starter", "on", False],
            ["in thread", "starter", False],
            ["in timer", "starter", False],
            ["pool 1", "starter", False],
            ["pool 2", "starter", False],
        ]
    )
    # Off: the threads' spans start traces of their own, so this one has none of them.
    assert result["off"] == [["off", None, False], ["starter", "off", False]]


def test_a_library_shutting_its_provider_down_does_not_stop_shared_processors() -> None:
    # The OTLP export is added to every provider; a library that tears its own provider
    # down (a short-lived private one, say) must not stop it. Ours, at exit, does.
    result = run_python(
        """
        from opentelemetry.sdk.trace import SpanProcessor
        import agenta_notebook as an
        from agenta_notebook import runtime


        class Stoppable(SpanProcessor):
            stopped = 0

            def shutdown(self):
                self.stopped += 1


        shared = Stoppable()
        runtime.attach_everywhere(shared)
        library, _ = provider_with_exporter()
        library.shutdown()
        after_library = shared.stopped
        runtime.RUNTIME.tracing.provider.shutdown()  # what the SDK does for it at exit
        print(json.dumps({"after_library": after_library, "after_ours": shared.stopped}))
        """
    )
    assert result == {"after_library": 0, "after_ours": 1}


# -- the real Logfire ------------------------------------------------------------------------
#
# `logfire.configure()` builds an SDK provider, wraps it in a provider of Logfire's own class
# (re-pointed at a new SDK provider on each `configure`) and sets that wrapper global. Both
# orders must work in a notebook: the extension loaded before or after `configure`.

#: Runs before each Logfire scenario: no Logfire/OTel settings from the environment, and a
#: socket guard that refuses (and records) every connection or lookup beyond 127.0.0.1; at
#: exit (after the providers' own shutdown) a refused attempt fails the interpreter.
LOGFIRE_PRELUDE = """
import atexit, os, sys, warnings

for key in list(os.environ):
    if key.startswith(("LOGFIRE_", "OTEL_")):
        del os.environ[key]

sys.path.insert(0, GUARD_FOLDER)
from loopback_guard import Guard

refused = Guard().install().refused


@atexit.register  # registered first, so it runs last
def no_network_at_exit():
    if refused:
        sys.stderr.write("tried to leave the machine: %r\\n" % (refused,))
        sys.stderr.flush()
        os._exit(3)


logfire_logged = Logged()
logging.getLogger("logfire").addHandler(logfire_logged)
caught = warnings.catch_warnings(record=True)
caught_warnings = caught.__enter__()
warnings.simplefilter("always")


def configure_logfire():
    import logfire

    exporter = InMemorySpanExporter()
    logfire.configure(
        send_to_logfire=False,
        console=False,
        additional_span_processors=[SimpleSpanProcessor(exporter)],
        # `python -c` code has no source to read: Logfire would log that as a span.
        inspect_arguments=False,
    )
    return exporter


def traced_cell(name, early):
    # Logfire's span around our LLM span around instrumentations' spans: `early` took its
    # tracer before anything was configured, `late` takes it now.
    import logfire
    import agenta_notebook as an

    late = trace.get_tracer("instrumentation.late")
    with an.trace(name) as t:
        with logfire.span("step"):
            with early.start_as_current_span("library call"):
                with an.span("inner", type="llm"):
                    an.record_usage(
                        model="gpt-4o-mini", provider="openai", input_tokens=100,
                        output_tokens=20,
                    )
                    with late.start_as_current_span("http request"):
                        pass
    return t


def exported_tree(exporter):
    spans = exporter.get_finished_spans()
    names = {s.context.span_id: s.name for s in spans}
    return sorted(
        [s.name, names.get(s.parent.span_id) if s.parent is not None else None]
        for s in spans
    )


def logfire_wiring():
    from agenta_notebook import runtime

    global_provider = trace.get_tracer_provider()
    inner = getattr(global_provider, "provider", None)  # the SDK provider Logfire wraps
    multi = getattr(inner, "_active_span_processor", None)
    processors = getattr(multi, "_span_processors", ())
    return {
        "global": type(global_provider).__module__ + "." + type(global_provider).__name__,
        "inner_attached": inner in runtime.attached_providers(),
        "collector_first": processors[:1] == (runtime.get_collector(),),
    }


def summary(t, exporter, **more):
    caught.__exit__(None, None, None)
    return json.dumps({
        "rows": rows(t),
        "tokens": t.totals.total_tokens,
        "calls": t.totals.model_calls,
        "cost": str(t.totals.cost),
        "exported": exported_tree(exporter),
        "wiring": logfire_wiring(),
        "overriding": overriding(),
        "logfire_logged": logfire_logged.messages,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught_warnings],
        "refused": refused,
        **more,
    })
""".replace("GUARD_FOLDER", repr(str(Path(__file__).resolve().parent)))

#: The cell's spans, each under its parent: in our trace and in what Logfire exported.
LOGFIRE_TREE: list[list[Any]] = [
    ["cell", None],
    ["step", "cell"],
    ["library call", "step"],
    ["inner", "library call"],
    ["http request", "inner"],
]


def run_logfire(code: str) -> dict[str, Any]:
    return run_python(LOGFIRE_PRELUDE + textwrap.dedent(code))


def assert_logfire_scenario(result: dict[str, Any]) -> None:
    assert result["refused"] == []
    # Logfire set its provider global, quietly, and the collector is on the SDK provider
    # it wraps, first.
    assert not result["overriding"]
    assert result["wiring"] == {
        "global": "logfire._internal.tracer.ProxyTracerProvider",
        "inner_attached": True,
        "collector_first": True,
    }
    assert result["rows"] == [[name, parent, False] for name, parent in LOGFIRE_TREE]
    # Logfire's exporter got the whole cell: its span, the instrumentations' (Logfire's
    # provider is the global one) and ours, with the same parents.
    assert result["exported"] == sorted(LOGFIRE_TREE)
    usage = genai_prices.Usage(input_tokens=100, output_tokens=20)
    price = genai_prices.calc_price(usage, "gpt-4o-mini", provider_id="openai").total_price
    assert (result["tokens"], result["calls"]) == (120, 1)
    assert Decimal(result["cost"]) == price
    assert result["logfire_logged"] == []
    assert result["warnings"] == []


def test_logfire_configured_after_the_extension_loaded() -> None:
    result = run_logfire(
        """
        early = trace.get_tracer("instrumentation.early")  # at import time: a proxy

        import agenta_notebook as an
        from agenta_notebook import runtime

        an.get_collector()  # what %load_ext does
        ours_was_global = trace.get_tracer_provider() is runtime.RUNTIME.tracing.provider
        exporter = configure_logfire()
        t = traced_cell("cell", early)

        # A notebook runs the configure cell again: a new SDK provider behind the same
        # global wrapper; the old one is shut down.
        second_exporter = configure_logfire()
        again = traced_cell("cell", early)
        print(summary(
            t,
            exporter,
            ours_was_global=ours_was_global,
            again_rows=rows(again),
            again_exported=exported_tree(second_exporter),
            first_exported_once=len(exporter.get_finished_spans()),
        ))
        """
    )
    assert_logfire_scenario(result)
    assert result["ours_was_global"]
    assert result["again_rows"] == [[name, parent, False] for name, parent in LOGFIRE_TREE]
    assert result["again_exported"] == sorted(LOGFIRE_TREE)
    assert result["first_exported_once"] == len(LOGFIRE_TREE)


def test_logfire_configured_before_the_extension_loaded() -> None:
    result = run_logfire(
        """
        early = trace.get_tracer("instrumentation.early")  # at import time: a proxy
        exporter = configure_logfire()

        import agenta_notebook as an

        an.get_collector()  # what %load_ext does
        t = traced_cell("cell", early)
        print(summary(t, exporter))
        """
    )
    assert_logfire_scenario(result)
