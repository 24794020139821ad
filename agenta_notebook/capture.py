"""What `@span` records of a decorated function's inputs and outputs.

Flattened as Agenta's SDK does with its default depth (2), under Agenta's keys; the work
is bounded by the caps of the session's `Capture` settings (`set_capture`): a big value
is encoded only as far as the characters kept. `spans.py` calls it on every decorated
call, on the user's thread.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring
from typing import Any, Final, Literal

from opentelemetry import trace as otel_trace

from agenta_notebook.core.usage import AG_INPUTS, AG_JSON_PREFIX, AG_OUTPUTS
from agenta_notebook.errors import internal_error
from agenta_notebook.runtime import Capture

#: Agenta's keys of a span's inputs and outputs (`ag.data.inputs.<parameter>`,
#: `ag.data.outputs.<key>`, `ag.data.outputs.__default__` for a return value that is
#: not a dict), and the prefix of a value that is JSON text.
INPUTS_PREFIX: Final = AG_INPUTS + "."
OUTPUTS_PREFIX: Final = AG_OUTPUTS + "."
DEFAULT_OUTPUT: Final = OUTPUTS_PREFIX + "__default__"
JSON_PREFIX: Final = AG_JSON_PREFIX
#: How many items a generator's span yielded (its outputs keep the first `max_items`).
YIELDED_ATTRIBUTE: Final = "agenta_notebook.yielded"
#: Ends a value cut at the size caps (and stands for values dropped past the span's cap).
CUT: Final = "…"

Capturing = bool | Literal["inputs", "outputs"]

#
# Flattened as Agenta's SDK does with its default depth (2): one attribute per parameter
# and per key of a returned dict; str, int, float and bool as they are (an int past 64
# bits, and bytes decoded as UTF-8, as text); dicts, lists and pydantic models as
# `@ag.type=json:` + JSON; anything else as its repr; None not recorded. The work is
# bounded by the caps: a big value is encoded only as far as the characters kept.
# Like Agenta, only the arguments passed are recorded (no defaults), which
# spares binding the signature on every call; unlike it, `self`/`cls` are skipped.


class Parameters:
    """What a decorated function's signature says, worked out once at decoration."""

    __slots__ = ("keys", "skip", "varargs")

    def __init__(self, func: Callable[..., Any]) -> None:
        self.keys: tuple[str, ...] = ()
        self.skip = 0
        self.varargs = INPUTS_PREFIX + "args"
        try:
            parameters = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):  # a builtin without a signature: keyed by position
            return
        positional = [
            parameter.name
            for parameter in parameters
            if parameter.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        if positional and positional[0] in ("self", "cls"):
            self.skip = 1
            positional = positional[1:]
        self.keys = tuple(INPUTS_PREFIX + name for name in positional)
        for parameter in parameters:
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                self.varargs = INPUTS_PREFIX + parameter.name


#: A value the redaction hook failed on: nothing is recorded for it.
_SKIP: Final = object()


def _redacted(settings: Capture, hook: Callable[[str, Any], Any], key: str, value: Any) -> Any:
    try:
        return hook(key, value)
    except Exception as error:
        if not settings.redact_warned:
            settings.redact_warned = True
            warnings.warn(
                f"agenta_notebook: the redact hook raised {type(error).__name__}: {error}; "
                f"{key} (and any other value it fails on) is not recorded",
                RuntimeWarning,
                stacklevel=2,
            )
        return _SKIP


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    return repr(value)


#: OTLP's integers are signed 64-bit: an int outside is recorded as its decimal text.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1
#: Python refuses to print an int of more than 4,300 digits (about 14,000 bits).
_INT_PRINTABLE_BITS: Final = 14_000


def _fits(value: Any, budget: int) -> bool:
    """Whether `value`'s JSON is about `budget` characters or less, decided by a walk that
    stops as soon as it is not (so its work is bounded by `budget`, not by `value`).

    An estimate (a float counts 12, an object shown by its repr 20): within a small
    factor of the JSON's length. A nested object with `model_dump` counts as big.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            budget -= len(item) + 2
        elif isinstance(item, (list, tuple)):
            budget -= 2 + 2 * len(item)
            if budget < 0:
                return False
            stack.extend(item)
        elif isinstance(item, dict):
            budget -= 2 + 6 * len(item)
            if budget < 0:
                return False
            for key in item:
                if isinstance(key, str):
                    budget -= len(key)
            stack.extend(item.values())
        elif isinstance(item, float):
            budget -= 12
        elif item is None or isinstance(item, (int, bool)):
            budget -= 3
        elif callable(getattr(item, "model_dump", None)):
            return False
        else:
            budget -= 20
        if budget < 0:
            return False
    return True


#: Items of a list encoded at once when they are all plain numbers (or bools, None).
_BATCH: Final = 32
_NUMBERS: Final = frozenset({int, float, bool, type(None)})


def _json_float(value: float) -> str:
    if value != value:
        return "NaN"
    if value == float("inf"):
        return "Infinity"
    if value == float("-inf"):
        return "-Infinity"
    return float.__repr__(value)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return _json_float(key)
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _json_chunks(value: Any, room: int, open_ids: set[int]) -> Iterator[str]:
    """`json.dumps(value, default=_json_default, ensure_ascii=False)` in pieces, made as
    they are asked for (strings cut past `room` characters); raises as `json.dumps` would
    (ValueError on a cycle, TypeError on a key JSON cannot hold)."""
    if isinstance(value, str):
        yield encode_basestring(value[: room + 1])
    elif value is None:
        yield "null"
    elif value is True:
        yield "true"
    elif value is False:
        yield "false"
    elif isinstance(value, int):
        yield int.__repr__(value)
    elif isinstance(value, float):
        yield _json_float(value)
    elif isinstance(value, (list, tuple, dict)):
        ident = id(value)
        if ident in open_ids:
            raise ValueError("Circular reference detected")
        open_ids.add(ident)
        if isinstance(value, dict):
            yield "{"
            for index, (key, item) in enumerate(value.items()):
                yield (", " if index else "") + encode_basestring(_json_key(key)[: room + 1])
                yield ": "
                yield from _json_chunks(item, room, open_ids)
            yield "}"
        else:
            yield "["
            # By batches: a batch of plain numbers (an embedding) at once, in C.
            for start in range(0, len(value), _BATCH):
                batch = value[start : start + _BATCH]
                if set(map(type, batch)) <= _NUMBERS:
                    text = json.dumps(batch)
                    yield (", " if start else "") + text[1:-1]
                    continue
                for index, item in enumerate(batch, start):
                    if index:
                        yield ", "
                    yield from _json_chunks(item, room, open_ids)
            yield "]"
        open_ids.discard(ident)
    else:
        shown = _json_default(value)
        if isinstance(shown, str) and shown is not value:
            yield encode_basestring(shown[: room + 1])
        else:
            yield from _json_chunks(shown, room, open_ids)


def _repr_chunks(value: Any, room: int, open_ids: set[int]) -> Iterator[str]:
    """`repr(value)` in pieces, made as they are asked for, for dicts, lists and tuples
    (strings cut past `room` characters); any other object is its whole repr."""
    kind = type(value)
    if kind is str:
        yield repr(value[: room + 1])
        return
    if kind is not list and kind is not tuple and kind is not dict:
        yield repr(value)
        return
    ident = id(value)
    if ident in open_ids:
        yield "[...]" if kind is list else "{...}" if kind is dict else "(...)"
        return
    open_ids.add(ident)
    if kind is dict:
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            if index:
                yield ", "
            yield from _repr_chunks(key, room, open_ids)
            yield ": "
            yield from _repr_chunks(item, room, open_ids)
        yield "}"
    else:
        yield "[" if kind is list else "("
        for index, item in enumerate(value):
            if index:
                yield ", "
            yield from _repr_chunks(item, room, open_ids)
        yield "]" if kind is list else ("," if len(value) == 1 else "") + ")"
    open_ids.discard(ident)


def _take(chunks: Iterator[str], room: int) -> str:
    """The pieces joined, up to the first past `room` characters (the rest never made)."""
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > room:
            break
    return "".join(parts)


def _json_text(value: Any, room: int) -> str:
    """`value`'s JSON, or (when longer than `room`) a piece of it longer than `room`;
    the work is bounded by `room`. Raises as `json.dumps` would."""
    if _fits(value, room):  # small: at once, in C
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    return _take(_json_chunks(value, room, set()), room)


def _encode_other(value: Any, room: int) -> str:
    """A value that is not str/float/bool/None nor an int of 64 bits, as text; past
    `room` characters only the start of it is made (longer than `room`, to be cut)."""
    try:
        if isinstance(value, (bytes, bytearray)):  # as UTF-8 text; a character is <= 4 bytes
            return value[: 4 * (room + 1)].decode("utf-8", errors="replace")
        if isinstance(value, str):  # a subclass (a StrEnum): its text, as Agenta keeps it
            return str.__str__(value[: room + 1])
        if type(value) is int:  # past 64 bits
            if value.bit_length() > _INT_PRINTABLE_BITS:
                return f"(an integer of {value.bit_length()} bits)"
            return str(value)
        dump = getattr(value, "model_dump", None)
        if isinstance(value, (dict, list)) or callable(dump):
            if not isinstance(value, (dict, list)) and callable(dump):
                value = dump()
            try:
                return JSON_PREFIX + _json_text(value, room)
            except (TypeError, ValueError, RecursionError):  # tuple keys, a cycle: its repr
                return _take(_repr_chunks(value, room, set()), room)
        if type(value) is tuple:
            return _take(_repr_chunks(value, room, set()), room)
        return repr(value)
    except Exception:  # the user's object cannot be shown: a placeholder, never a failure
        return f"<{type(value).__name__} that cannot be shown>"


def _cut(text: str, room: int) -> str:
    """`text` within `room` characters, cut ones ending with CUT (JSON ones lose the
    `@ag.type=json:` prefix, as they are no longer JSON)."""
    if len(text) <= room:
        return text
    if room <= 0:
        return CUT
    if text.startswith(JSON_PREFIX):
        text = text[len(JSON_PREFIX) :]
    return text[: room - 1] + CUT


def _put(captured: dict[str, Any], key: str, value: Any, settings: Capture, used: int) -> int:
    """Record `value` under `key` in `captured`; returns the characters used so far."""
    hook = settings.redact
    if hook is not None:
        value = _redacted(settings, hook, key, value)
        if value is _SKIP:
            return used
    kind = type(value)
    if kind is float or kind is bool or (kind is int and _INT_MIN <= value <= _INT_MAX):
        captured[key] = value
        return used
    if value is None:
        return used
    room = min(settings.max_chars, settings.max_total - used)
    if room <= 0:  # the span's budget is spent: nothing to encode
        captured[key] = CUT
        return used + len(CUT)
    if kind is not str:
        value = _encode_other(value, room)
    if len(value) > room:
        value = _cut(value, room)
    captured[key] = value
    return used + len(value)


def capture_inputs(
    parameters: Parameters, args: tuple[Any, ...], kwargs: dict[str, Any], settings: Capture
) -> tuple[dict[str, Any], int]:
    captured: dict[str, Any] = {}
    used = 0
    try:
        if parameters.skip:
            args = args[1:]
        keys = parameters.keys
        plain = settings.redact is None
        max_chars = settings.max_chars
        max_total = settings.max_total
        for key, value in zip(keys, args, strict=False):
            kind = type(value)
            if plain:  # the fast path of `_put` for the common small values
                if kind is str and len(value) <= max_chars and used + len(value) <= max_total:
                    captured[key] = value
                    used += len(value)
                    continue
                if kind is float or kind is bool or (kind is int and _INT_MIN <= value <= _INT_MAX):
                    captured[key] = value
                    continue
            used = _put(captured, key, value, settings, used)
        if len(args) > len(keys):
            used = _put(captured, parameters.varargs, list(args[len(keys) :]), settings, used)
        for name, value in kwargs.items():
            used = _put(captured, INPUTS_PREFIX + name, value, settings, used)
    except Exception:
        internal_error("capturing the inputs of a span")
    return captured, used


def capture_output(span: otel_trace.Span, result: Any, settings: Capture, used: int) -> None:
    try:
        captured: dict[str, Any] = {}
        if isinstance(result, dict):
            if "message" in result and "cost" in result and "usage" in result:
                _put(captured, DEFAULT_OUTPUT, result["message"], settings, used)
            else:
                for key, value in result.items():
                    used = _put(captured, OUTPUTS_PREFIX + str(key), value, settings, used)
        else:
            _put(captured, DEFAULT_OUTPUT, result, settings, used)
        if captured:
            span.set_attributes(captured)
    except Exception:
        internal_error("capturing the output of a span")


class Yields:
    """What a generator yielded, encoded as each item is yielded (so later changes to an
    item do not show, and no item is kept): the first `max_items` items within the
    span's characters left, and a count of every item.

    While every item kept is a str, `parts` are those strings (joined at the end);
    from the first other item on, `parts` are each item's JSON (a JSON list at the end).
    """

    __slots__ = (
        "count",
        "cut",
        "dropped",
        "full",
        "limit",
        "parts",
        "room",
        "settings",
        "size",
        "text",
    )

    def __init__(self, settings: Capture, used: int) -> None:
        self.settings = settings
        self.limit = settings.max_items
        self.room = min(settings.max_chars, settings.max_total - used)
        self.parts: list[str] = []
        self.text = True
        self.size = 0  # characters of the output so far (of the JSON list once not text)
        self.count = 0
        self.dropped = 0  # items the redaction hook chose not to record
        self.full = self.room <= 0  # nothing more is kept (past the caps)
        self.cut = False  # something yielded is missing from the output

    def add(self, item: Any) -> None:
        self.count += 1
        if self.full:
            self.cut = True
            return
        try:
            self._keep(item)
        except Exception:
            self.full = self.cut = True
            internal_error("capturing what a generator yielded")

    def _keep(self, item: Any) -> None:
        hook = self.settings.redact
        if hook is not None:
            item = _redacted(self.settings, hook, DEFAULT_OUTPUT, item)
            if item is _SKIP or item is None:
                self.dropped += 1
                return
        if len(self.parts) >= self.limit:
            self.full = self.cut = True
            return
        if self.text and type(item) is str:
            left = self.room - self.size
            if len(item) > left:  # keep one character more than fits: the cut shows
                item = item[: left + 1]
                self.full = self.cut = True
            self.parts.append(item)
            self.size += len(item)
            return
        if self.text:  # the first item that is not a str: the kept ones become JSON
            self.text = False
            self.parts = [encode_basestring(part) for part in self.parts]
            self.size = 2 + sum(len(part) + 2 for part in self.parts)
        left = self.room - self.size - (2 if self.parts else 0)
        if left <= 0:
            self.full = self.cut = True
            return
        if isinstance(item, str):
            encoded = encode_basestring(item[: left + 1])
        else:
            try:
                encoded = _json_text(item, left)
            except (TypeError, ValueError, RecursionError):  # as JSON's default would: its repr
                encoded = encode_basestring(_take(_repr_chunks(item, left, set()), left))
        self.size += len(encoded) + (2 if self.parts else 0)
        self.parts.append(encoded)
        if self.size > self.room:
            self.full = self.cut = True

    def record(self, span: otel_trace.Span) -> None:
        try:
            captured: dict[str, Any] = {}
            if self.dropped == 0 or self.parts:
                output: str
                if self.room <= 0:
                    output = CUT
                elif self.text:
                    output = "".join(self.parts) + (CUT if self.cut else "")
                else:
                    parts = [*self.parts, encode_basestring(CUT)] if self.cut else self.parts
                    output = JSON_PREFIX + "[" + ", ".join(parts) + "]"
                captured[DEFAULT_OUTPUT] = _cut(output, self.room)
            captured[YIELDED_ATTRIBUTE] = self.count
            span.set_attributes(captured)
        except Exception:
            internal_error("capturing what a generator yielded")


def capture_modes(capture: Capturing) -> tuple[bool, bool]:
    if capture is True or capture is False:
        return capture, capture
    if capture == "inputs":
        return True, False
    if capture == "outputs":
        return False, True
    raise ValueError(f"span: capture must be True, False, 'inputs' or 'outputs', not {capture!r}")
