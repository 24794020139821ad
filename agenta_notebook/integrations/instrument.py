"""Trace a whole stack in one call: every supported model client that is installed.

>>> import agenta_notebook as an
>>> outcomes = an.instrument()                 # doctest: +SKIP
openai: instrumented with openinference-instrumentation-openai
anthropic: traces itself (the SDK emits its own spans)
litellm: instrumented with openinference-instrumentation-litellm when it is imported
langchain: instrumentor missing: pip install 'agenta-notebook[langchain]'
google-genai: not installed
>>> outcomes["openai"].status                  # doctest: +SKIP
'instrumented'

Each library gets OpenInference's maintained instrumentor (the `openinference-
instrumentation-*` packages, one extra of this package each: `openai`, `anthropic`,
`litellm`, `langchain`, `google-genai`, or `all`), wired to the tracer provider the
collector is on. OpenAI goes through `instrument_openai()`, so streams abandoned before
their end are closed with their trace, as there.

A library is left alone, and said so, when

- it is not installed, or its instrumentor is not (the line names the extra to install);
- it is already instrumented: by an earlier call, by your own call to the same
  instrumentor, or by another known one (OpenTelemetry's `openai-v2` and
  `google-genai`, OpenLLMetry's `openai`, `anthropic`, `langchain` and
  `google-generativeai`, OpenTelemetry's `langchain`, or a LiteLLM callback that
  records spans: `otel`, `arize`, `langfuse_otel`, `logfire`, `traceloop`, Agenta's).
  Two instrumentations of one call record it twice; the roll-up counts such a call once
  and marks its twin, but one recorder per call is the clean setup;
- it traces itself: the Anthropic SDK (2.x) emits an OpenTelemetry span for every API
  call, with its usage, unless `ANTHROPIC_OPEN_TELEMETRY=false` was set before the
  client was made. Set that to have `instrument("anthropic")` add OpenInference's
  instrumentor instead.

A library that is installed but not imported yet is instrumented when it is first
imported, so `instrument()` at the top of a notebook costs no import. (Importing LiteLLM
downloads its model price map unless `LITELLM_LOCAL_MODEL_COST_MAP=True` is set; this
module never imports it before you do.)

`uninstrument()` undoes what `instrument()` did, and only that.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from agenta_notebook.errors import internal_error
from agenta_notebook.integrations import openai as openai_integration
from agenta_notebook.runtime import RUNTIME, get_collector

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["LIBRARIES", "Outcome", "Status", "instrument", "uninstrument"]

Status = Literal[
    "instrumented",
    "already instrumented",
    "traces itself",
    "not installed",
    "instrumentor missing",
    "failed",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `instrument()` did for one library.

    `status` is one of `Status`; `detail` says by whom (the instrumentor used, or the one
    already there), the extra to install, or why it failed; `on_import` is True when the
    library is instrumented only once it is imported.
    """

    library: str
    status: Status
    detail: str = ""
    on_import: bool = False

    @property
    def message(self) -> str:
        """The line `instrument()` prints for this library, without the library's name."""
        if self.status == "instrumented":
            return f"instrumented with {self.detail}" + (
                " when it is imported" if self.on_import else ""
            )
        if self.status == "already instrumented":
            return f"already instrumented by {self.detail}"
        if self.status == "traces itself":
            return f"traces itself ({self.detail})"
        if self.status == "instrumentor missing":
            return f"instrumentor missing: pip install 'agenta-notebook[{self.detail}]'"
        if self.status == "failed":
            return f"not instrumented: {self.detail}"
        return self.status

    def __str__(self) -> str:
        return f"{self.library}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Instrumentor:
    """An OpenTelemetry instrumentor class, by module and name, and how to call it."""

    module: str
    name: str
    label: str


@dataclass(frozen=True, slots=True)
class _Library:
    name: str
    #: the module whose presence means the library is installed
    module: str
    extra: str
    ours: _Instrumentor
    #: other instrumentors that record the same calls
    others: tuple[_Instrumentor, ...] = ()


_OPENLLMETRY: Final = "OpenLLMetry's"
LIBRARIES: Final[tuple[_Library, ...]] = (
    _Library(
        "openai",
        "openai",
        "openai",
        _Instrumentor(
            "openinference.instrumentation.openai",
            "OpenAIInstrumentor",
            "openinference-instrumentation-openai",
        ),
        (
            _Instrumentor(
                "opentelemetry.instrumentation.openai_v2",
                "OpenAIInstrumentor",
                "opentelemetry-instrumentation-openai-v2",
            ),
            _Instrumentor(
                "opentelemetry.instrumentation.openai",
                "OpenAIInstrumentor",
                f"{_OPENLLMETRY} opentelemetry-instrumentation-openai",
            ),
        ),
    ),
    _Library(
        "anthropic",
        "anthropic",
        "anthropic",
        _Instrumentor(
            "openinference.instrumentation.anthropic",
            "AnthropicInstrumentor",
            "openinference-instrumentation-anthropic",
        ),
        (
            _Instrumentor(
                "opentelemetry.instrumentation.anthropic",
                "AnthropicInstrumentor",
                f"{_OPENLLMETRY} opentelemetry-instrumentation-anthropic",
            ),
        ),
    ),
    _Library(
        "litellm",
        "litellm",
        "litellm",
        _Instrumentor(
            "openinference.instrumentation.litellm",
            "LiteLLMInstrumentor",
            "openinference-instrumentation-litellm",
        ),
    ),
    _Library(
        "langchain",
        "langchain_core",
        "langchain",
        _Instrumentor(
            "openinference.instrumentation.langchain",
            "LangChainInstrumentor",
            "openinference-instrumentation-langchain",
        ),
        (
            # Both distributions are the module `opentelemetry.instrumentation.langchain`.
            _Instrumentor(
                "opentelemetry.instrumentation.langchain",
                "LangchainInstrumentor",
                f"{_OPENLLMETRY} opentelemetry-instrumentation-langchain",
            ),
            _Instrumentor(
                "opentelemetry.instrumentation.langchain",
                "LangChainInstrumentor",
                "opentelemetry-instrumentation-langchain",
            ),
        ),
    ),
    _Library(
        "google-genai",
        "google.genai",
        "google-genai",
        _Instrumentor(
            "openinference.instrumentation.google_genai",
            "GoogleGenAIInstrumentor",
            "openinference-instrumentation-google-genai",
        ),
        (
            _Instrumentor(
                "opentelemetry.instrumentation.google_genai",
                "GoogleGenAiSdkInstrumentor",
                "opentelemetry-instrumentation-google-genai",
            ),
            _Instrumentor(
                "opentelemetry.instrumentation.google_generativeai",
                "GoogleGenerativeAiInstrumentor",
                f"{_OPENLLMETRY} opentelemetry-instrumentation-google-generativeai",
            ),
        ),
    ),
)
_BY_NAME: Final = {library.name: library for library in LIBRARIES}
_ALIASES: Final = {
    "google.genai": "google-genai",
    "genai": "google-genai",
    "langchain-core": "langchain",
    "langchain.core": "langchain",
}
#: LiteLLM callbacks (`litellm.callbacks = [...]`) that record each call as a span.
_LITELLM_SPAN_CALLBACKS: Final = frozenset(
    {"otel", "arize", "arize_phoenix", "langfuse_otel", "logfire", "traceloop"}
)
_LITELLM_CALLBACK_LISTS: Final = (
    "callbacks",
    "success_callback",
    "_async_success_callback",
    "input_callback",
)
ANTHROPIC_TRACES_ENV: Final = "ANTHROPIC_OPEN_TELEMETRY"

# What instrument() did, what waits for an import and which post-import hooks exist are
# the runtime's (`RUNTIME.instruments`: `undo`, `pending`, `import_hooks`).


def _library(name: str) -> _Library:
    if not isinstance(name, str):
        raise TypeError(f"a library name must be a str, not {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    try:
        return _BY_NAME[key]
    except KeyError:
        supported = ", ".join(_BY_NAME)
        raise ValueError(f"unknown library {name!r}: supported are {supported}") from None


def _selected(names: Iterable[str]) -> list[_Library]:
    chosen: list[_Library] = []
    for name in names:
        library = _library(name)
        if library not in chosen:
            chosen.append(library)
    return chosen or list(LIBRARIES)


def _installed(module: str) -> bool:
    """True when `module` can be imported; never imports it (only its parent packages)."""
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _instance(instrumentor: _Instrumentor) -> Any:
    """The instrumentor's singleton if its module is imported and it was ever made.

    An instrumentor patches its library, so one that is instrumenting has been imported:
    a module not imported yet means not instrumenting, and nothing is imported here.
    """
    module = sys.modules.get(instrumentor.module)
    cls = getattr(module, instrumentor.name, None) if module is not None else None
    if not isinstance(cls, type):
        return None
    # BaseInstrumentor keeps its singleton on the class that was instantiated.
    return vars(cls).get("_instance")


def _is_active(instrumentor: _Instrumentor) -> bool:
    return bool(getattr(_instance(instrumentor), "is_instrumented_by_opentelemetry", False))


def _litellm_callback() -> str | None:
    """The LiteLLM callback that already records its calls as spans, if any."""
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return None
    for attribute in _LITELLM_CALLBACK_LISTS:
        entries = getattr(litellm, attribute, None)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, str):
                if entry.strip().lower() in _LITELLM_SPAN_CALLBACKS:
                    return f"LiteLLM's {entry!r} callback"
                continue
            cls = type(entry)
            if cls.__module__.split(".", 1)[0] == "agenta":
                return "Agenta's LiteLLM callback"
            if any(base.__module__ == "litellm.integrations.opentelemetry" for base in cls.__mro__):
                return f"LiteLLM's {cls.__name__} callback"
    return None


def _instrumented_by(library: _Library) -> str | None:
    """Who records this library's calls already, or None."""
    if library.name in RUNTIME.instruments.pending:
        return f"{library.ours.label} (when it is imported)"
    if library.name == "openai" and openai_integration.is_instrumented():
        return library.ours.label
    if _is_active(library.ours):
        return library.ours.label
    for other in library.others:
        if _is_active(other):
            return other.label
    if library.name == "litellm":
        return _litellm_callback()
    return None


def _anthropic_traces_itself() -> bool:
    """True when the Anthropic SDK installed emits its own spans and is not told not to."""
    if os.environ.get(ANTHROPIC_TRACES_ENV, "").strip().lower() == "false":
        return False
    if "anthropic" in sys.modules:
        return _installed("anthropic._tracing")
    try:
        spec = importlib.util.find_spec("anthropic")
    except (ImportError, ValueError):
        return False
    locations = spec.submodule_search_locations if spec is not None else None
    return any(
        (Path(location) / "_tracing.py").is_file() or (Path(location) / "_tracing").is_dir()
        for location in locations or ()
    )


def _default_provider() -> TracerProvider | None:
    get_collector()
    return RUNTIME.tracing.provider


def _instrument_openai(provider: TracerProvider | None) -> Outcome:
    label = LIBRARIES[0].ours.label
    undo: list[Callable[[], None]] = []
    if provider is not None and provider is not RUNTIME.tracing.provider:
        # instrument_openai() uses the collector's provider: put the instrumentor on the
        # one asked for first, then let it add what it adds around the client.
        from openinference.instrumentation.openai import OpenAIInstrumentor

        outcome = _instrument_with(LIBRARIES[0], OpenAIInstrumentor, provider, undo)
        if outcome.status != "instrumented":
            return outcome
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = openai_integration.instrument_openai()
    if not done:
        for step in reversed(undo):
            step()
        reason = "; ".join(str(warning.message) for warning in caught) or "refused"
        return Outcome("openai", "failed", reason)
    undo.insert(0, openai_integration.uninstrument_openai)

    def uninstrument_openai() -> None:
        for step in undo:
            step()

    RUNTIME.instruments.undo["openai"] = uninstrument_openai
    return Outcome("openai", "instrumented", label)


def _instrument_with(
    library: _Library, cls: Any, provider: TracerProvider | None, undo: list[Callable[[], None]]
) -> Outcome:
    """Call `cls().instrument(...)`; append its undo to `undo` when it instrumented."""
    instrumentor = cls()
    arguments: dict[str, Any] = {"raise_exception_on_conflict": True}
    if provider is not None:
        arguments["tracer_provider"] = provider
    try:
        instrumentor.instrument(**arguments)
    except Exception as error:
        conflict = getattr(error, "conflict", None)  # DependencyConflictError: wrong version
        if conflict is not None:
            return Outcome(library.name, "failed", str(conflict))
        internal_error(f"{library.ours.label}'s instrument()")  # logged with its traceback
        return Outcome(library.name, "failed", f"{library.ours.label} raised {error!r}")
    if not instrumentor.is_instrumented_by_opentelemetry:
        return Outcome(library.name, "failed", f"{library.ours.label} refused to instrument")

    def uninstrument_it() -> None:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()

    undo.append(uninstrument_it)
    return Outcome(library.name, "instrumented", library.ours.label)


def _instrument_now(library: _Library, provider: TracerProvider | None) -> Outcome:
    """Instrument an imported library (the checks have been made)."""
    if library.name == "openai":
        return _instrument_openai(provider)
    try:
        module = importlib.import_module(library.ours.module)
        cls = getattr(module, library.ours.name)
    except (ImportError, AttributeError) as error:  # an install that is broken or too old
        return Outcome(library.name, "failed", f"{library.ours.label} does not import: {error!r}")
    undo: list[Callable[[], None]] = []
    outcome = _instrument_with(library, cls, provider, undo)
    if undo:
        RUNTIME.instruments.undo[library.name] = undo[0]
    return outcome


def _on_import(name: str) -> Callable[[Any], None]:
    def hook(module: Any) -> None:
        state = RUNTIME.instruments
        with state.lock:
            if name not in state.pending:
                return  # uninstrumented before the import, or never pending
            provider = state.pending.pop(name)
            library = _BY_NAME[name]
            who = _instrumented_by(library)
            if who is not None:
                return
            try:
                outcome = _instrument_now(library, provider)
            except Exception as error:  # never break the import that triggered this
                internal_error(f"instrumenting {name} when it was imported")
                outcome = Outcome(name, "failed", repr(error))
        if outcome.status != "instrumented":
            warnings.warn(f"agenta_notebook.instrument: {outcome}", stacklevel=2)

    return hook


def _defer(library: _Library, provider: TracerProvider | None) -> Outcome | None:
    """Instrument `library` on its first import; None when that cannot be arranged."""
    try:
        from wrapt import register_post_import_hook
    except ImportError:
        return None
    state = RUNTIME.instruments
    state.pending[library.name] = provider
    if library.name not in state.import_hooks:
        state.import_hooks.add(library.name)
        # Runs the hook at once if the module was imported since the check.
        register_post_import_hook(_on_import(library.name), library.module)
    if library.name in state.pending:
        return Outcome(library.name, "instrumented", library.ours.label, on_import=True)
    return Outcome(library.name, "instrumented", library.ours.label)


def _instrument_one(library: _Library, provider: TracerProvider | None) -> Outcome:
    if not _installed(library.module):
        return Outcome(library.name, "not installed")
    who = _instrumented_by(library)
    if who is not None:
        return Outcome(library.name, "already instrumented", who)
    if library.name == "anthropic" and _anthropic_traces_itself():
        return Outcome(library.name, "traces itself", "the SDK emits its own spans")
    if not _installed(library.ours.module):
        return Outcome(library.name, "instrumentor missing", library.extra)
    if library.module not in sys.modules:
        deferred = _defer(library, provider)
        if deferred is not None:
            return deferred
    return _instrument_now(library, provider)


def instrument(
    *libraries: str, tracer_provider: TracerProvider | None = None
) -> dict[str, Outcome]:
    """Instrument every supported model client that is installed, or the ones named.

    Libraries: "openai", "anthropic", "litellm", "langchain", "google-genai". Prints one
    line per library and returns {library: Outcome}; see the module's documentation for
    what is skipped and why. Calling it again instruments nothing twice.

    `tracer_provider` is where the instrumentors' spans go: by default the provider the
    collector is on, so that traced cells and `trace(...)` see them.
    """
    chosen = _selected(libraries)
    if tracer_provider is not None:  # checked before anything is instrumented or pending
        from opentelemetry.trace import TracerProvider as ApiTracerProvider

        if not isinstance(tracer_provider, ApiTracerProvider):
            raise TypeError(
                "tracer_provider must be an OpenTelemetry TracerProvider, not "
                f"{type(tracer_provider).__name__}"
            )
    with RUNTIME.instruments.lock:
        provider = tracer_provider if tracer_provider is not None else _default_provider()
        outcomes = {library.name: _instrument_one(library, provider) for library in chosen}
    for outcome in outcomes.values():
        print(outcome)
    return outcomes


def uninstrument(*libraries: str) -> list[str]:
    """Undo what `instrument()` did, for every library or the ones named.

    Instrumentation that `instrument()` found in place is left alone. Returns the
    libraries it uninstrumented (or stopped waiting to instrument).
    """
    chosen = _selected(libraries)
    undone: list[str] = []
    state = RUNTIME.instruments
    with state.lock:
        for library in chosen:
            if library.name in state.pending:
                del state.pending[library.name]
                undone.append(library.name)
                continue
            undo = state.undo.pop(library.name, None)
            if undo is not None:
                undo()
                undone.append(library.name)
    return undone
