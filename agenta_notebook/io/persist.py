"""Save traces to, and load them from, OTLP JSON files.

The file format is the OTLP/JSON encoding of an `ExportTraceServiceRequest`, what an
OpenTelemetry Collector's `file` exporter writes: one request per line, with
`resourceSpans[].scopeSpans[].spans[]`, trace and span ids as hex strings, times as
decimal strings of nanoseconds, attributes as `{key, value: AnyValue}`, enum fields
(`kind`, `status.code`) as integers. Any tool that reads OTLP JSON reads our files, and
`load` reads theirs (one JSON object, a JSON array of requests, or JSON lines).

Decisions where OTLP is silent:
- `save` writes one trace as one compact line (a valid JSON document and a valid
  JSON-lines file). The trace's name, id and root span id ride along as attributes of
  each instrumentation scope (`agenta_notebook.trace.*`): scope attributes are not part
  of a `SpanRecord`, so this adds nothing to any span, and other tools just show them.
- A running span (no end time) is saved with `endTimeUnixNano` "0" and loaded as
  running; a missing end time in someone else's file means the same.
- Attribute values keep their type: str, bool, int, float (NaN and infinities as the
  protobuf JSON strings "NaN", "Infinity", "-Infinity") and homogeneous arrays (loaded
  as tuples, as the SDK stores them). Values outside OpenTelemetry's types, which only
  hand-made records can hold, are written as: bytes -> `bytesValue`, mappings ->
  `kvlistValue` (loaded as dict), None -> an empty AnyValue (loaded as None), anything
  else -> its `str()`; so is an int beyond 64 bits (OTLP's `intValue` is an int64).
  Text is written as UTF-8 and round-trips exactly, except a lone surrogate (a Python
  str that is not valid Unicode, which no OTLP reader accepts): it is saved as U+FFFD,
  as Go's and Rust's JSON readers would read it anyway.
- Spans are saved in the receiver's vocabulary too, as the OTLP export sends them: next
  to the keys a span has, the OpenTelemetry GenAI conventions' and OpenInference's keys
  for its kind, model and the usage counted at it (`agenta_notebook.core.vocabulary`), so
  a file imported into Phoenix or any GenAI-aware tool shows our model calls with their
  tokens. A key the span has is never overwritten, and the keys added never change
  what `load` reads: a loaded trace has the same figures. `trace_to_otlp(trace,
  receiver_keys=False)` gives the spans exactly as recorded.
- A file with several traces: `load` returns the first (in order of first appearance)
  or the one whose id you pass; `load_all` returns all of them. A trace's spans may be
  spread over several lines, as the Collector writes them.
- Without our scope attributes (a file from another tool), the root is the span marked
  `agenta_notebook.root`, else the single span without a parent, else none (the tree
  then gets a synthetic root); the name is the root's name, else "trace".
- Ids are strict: a span id is exactly 16 hex digits, a trace id 32 (or, as plain
  protobuf JSON writes them, the same bytes in base64), and never all zero (OTLP's
  invalid id, and the id of a synthetic root). An all-zero parent span id is kept: it
  names no span, so that span hangs under the root, marked detached.
- Reading is bounded: the document (after gzip, if the file is compressed) may hold at
  most `max_bytes` bytes (default `DEFAULT_MAX_BYTES`, 2 GiB, about twice a saved 1M-span
  trace; the environment variable `AGENTA_NOTEBOOK_MAX_LOAD_BYTES` changes the default).
  A bigger document is refused while it streams in, before it is held in memory.
- `save` writes through a symbolic link to its target (the link stays), and a new file
  gets the mode `open()` would give it (0o666 less the umask); an existing one keeps its.
- Nothing is half loaded: the whole file is parsed and checked before any `Trace` is
  made, and any problem raises `TraceFileError` (a `ValueError`) naming the file, the
  line and the field.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import os
import re
import secrets
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from agenta_notebook.collector import ROOT_MARKER
from agenta_notebook.core.rollup import SpanEvent, SpanRecord, StatusCode
from agenta_notebook.core.vocabulary import exported_attributes
from agenta_notebook.live import Trace
from agenta_notebook.runtime import user_prices

#: Scope attributes that carry a trace's own metadata in our files.
TRACE_NAME_KEY: Final = "agenta_notebook.trace.name"
TRACE_ID_KEY: Final = "agenta_notebook.trace.id"
ROOT_SPAN_ID_KEY: Final = "agenta_notebook.trace.root_span_id"

_KIND_TO_CODE: Final = {
    "UNSPECIFIED": 0,
    "INTERNAL": 1,
    "SERVER": 2,
    "CLIENT": 3,
    "PRODUCER": 4,
    "CONSUMER": 5,
}
_CODE_TO_KIND: Final = {code: name for name, code in _KIND_TO_CODE.items()}
_STATUS_TO_CODE: Final[dict[str, int]] = {"UNSET": 0, "OK": 1, "ERROR": 2}
_CODE_TO_STATUS: Final[dict[int, StatusCode]] = {0: "UNSET", 1: "OK", 2: "ERROR"}
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_HEX_ID: Final = {8: re.compile("[0-9a-fA-F]{16}"), 16: re.compile("[0-9a-fA-F]{32}")}

#: The largest document `load` reads unless told otherwise (bytes, after gzip).
DEFAULT_MAX_BYTES: Final = 2 * 1024**3
#: The environment variable that changes that default.
MAX_BYTES_ENV: Final = "AGENTA_NOTEBOOK_MAX_LOAD_BYTES"
_CHUNK: Final = 1 << 20
_KEEP: Final = 16 << 20  # a gzip document bigger than this is measured before it is kept


class TraceFileError(ValueError):
    """A trace file that cannot be read: not JSON, truncated, or not OTLP traces."""


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _hex_id(value: int, width: int, what: str) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 16**width:
        raise ValueError(f"{what} {value!r} does not fit in {width * 4} bits")
    return f"{value:0{width}x}"


def _text(value: str) -> str:
    """`value`, with any lone surrogate replaced so that the text is valid UTF-8."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def _encode_double(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def encode_value(value: Any) -> dict[str, Any]:
    """One attribute value as an OTLP JSON `AnyValue`.

    >>> encode_value(3), encode_value(True), encode_value(("a", "b"))
    ({'intValue': '3'}, {'boolValue': True}, {'arrayValue': {'values': [{'stringValue': 'a'}, {'stringValue': 'b'}]}})
    """  # noqa: E501
    if isinstance(value, str):
        return {"stringValue": _text(value)}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}  # OTLP ints are 64-bit: keep the digits
    if isinstance(value, float):
        return {"doubleValue": _encode_double(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytesValue": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": encode_attributes(value)}}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [encode_value(item) for item in value]}}
    if value is None:
        return {}
    return {"stringValue": _text(str(value))}


def encode_attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Attributes as an OTLP JSON list of `{key, value}`."""
    if not attributes:
        return []
    return [
        {"key": _text(str(key)), "value": encode_value(value)} for key, value in attributes.items()
    ]


def encode_span(record: SpanRecord, attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One `SpanRecord` as an OTLP JSON `Span` (with `attributes` instead of its own)."""
    span: dict[str, Any] = {
        "traceId": _hex_id(record.trace_id, 32, "trace id"),
        "spanId": _hex_id(record.span_id, 16, "span id"),
    }
    if record.parent_span_id is not None:
        span["parentSpanId"] = _hex_id(record.parent_span_id, 16, "parent span id")
    span["name"] = _text(record.name)
    span["kind"] = _KIND_TO_CODE.get(record.kind.upper(), 1)
    span["startTimeUnixNano"] = str(record.start_time_ns)
    # OTLP has no "running": an end time of 0 says the span had not ended when saved.
    span["endTimeUnixNano"] = str(record.end_time_ns if record.end_time_ns is not None else 0)
    span["attributes"] = encode_attributes(record.attributes if attributes is None else attributes)
    span["events"] = [
        {
            "timeUnixNano": str(event.timestamp_ns),
            "name": _text(event.name),
            "attributes": encode_attributes(event.attributes),
        }
        for event in record.events
    ]
    status: dict[str, Any] = {}
    if record.status_message is not None:
        status["message"] = _text(record.status_message)
    code = _STATUS_TO_CODE.get(record.status, 0)
    if code:
        status["code"] = code
    span["status"] = status
    return span


def trace_to_otlp(trace: Trace, *, receiver_keys: bool = True) -> dict[str, Any]:
    """The trace as one OTLP JSON `ExportTraceServiceRequest` (a plain dict).

    Spans are grouped by resource and instrumentation scope, as OTLP requires. With
    `receiver_keys` (the default), each span also carries the GenAI conventions' and
    OpenInference's keys for its kind, model and counted usage (see the module's doc).
    """
    attributes: dict[int, Mapping[str, Any]] = {}
    if receiver_keys:
        # One snapshot: the records and the tree that says what is counted at each.
        nodes = trace.tree.by_id.values()
        unsorted = [node.record for node in nodes]
        attributes = {node.span_id: exported_attributes(node) for node in nodes}
    else:
        unsorted = trace.records()
    records = sorted(unsorted, key=lambda r: (r.start_time_ns, r.span_id))
    metadata: dict[str, Any] = {
        TRACE_NAME_KEY: trace.name,
        TRACE_ID_KEY: _hex_id(trace.trace_id, 32, "trace id"),
    }
    if trace.root_span_id is not None:
        metadata[ROOT_SPAN_ID_KEY] = _hex_id(trace.root_span_id, 16, "root span id")
    scope_attributes = encode_attributes(metadata)

    groups: dict[str, tuple[list[dict[str, Any]], dict[str | None, list[dict[str, Any]]]]] = {}
    for record in records:
        resource = encode_attributes(record.resource)
        key = json.dumps(resource, sort_keys=True)
        if key not in groups:
            groups[key] = (resource, {})
        groups[key][1].setdefault(record.scope, []).append(
            encode_span(record, attributes.get(record.span_id))
        )

    resource_spans = []
    for resource, scopes in groups.values():
        resource_spans.append(
            {
                "resource": {"attributes": resource},
                "scopeSpans": [
                    {
                        "scope": {"name": _text(scope or ""), "attributes": scope_attributes},
                        "spans": spans,
                    }
                    for scope, spans in scopes.items()
                ],
            }
        )
    if not resource_spans:  # an empty trace still keeps its name and id
        resource_spans.append(
            {
                "resource": {"attributes": []},
                "scopeSpans": [
                    {"scope": {"name": "", "attributes": scope_attributes}, "spans": []}
                ],
            }
        )
    return {"resourceSpans": resource_spans}


def save_trace(trace: Trace, path: str | os.PathLike[str]) -> None:
    """Write `trace` to `path` as OTLP JSON (one line), replacing the file atomically.

    Running spans are saved with `endTimeUnixNano` "0". Use `Trace.save(path)`.

    >>> import agenta_notebook as an, tempfile, os
    >>> with an.trace("demo") as t:
    ...     pass
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.otlp.json")
    >>> t.save(path)
    >>> an.load(path).name
    'demo'
    """
    # Every str is valid Unicode by now (see `_text`), and NaN is the string "NaN".
    text = json.dumps(
        trace_to_otlp(trace), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    target = Path(path).expanduser()
    if target.is_symlink():
        # Write what the link points to, and keep the link (replacing it would leave
        # its target with the old content).
        target = Path(os.path.realpath(target))
    try:
        mode: int | None = target.stat().st_mode & 0o777
    except OSError:
        mode = None  # a new file: the mode open() gives it, 0o666 less the umask
    descriptor, temporary = _create_temporary(target)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
            file.write("\n")
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _create_temporary(target: Path) -> tuple[int, str]:
    """A new file next to `target`, created as `open()` would (mode 0o666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temporary = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"{target}: could not create a temporary file next to it")


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


class _Problem(Exception):
    """A problem at a place in the document; turned into a `TraceFileError` by the caller."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")


def _field(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    # Protobuf JSON parsers accept both the lowerCamelCase and the original field name.
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Problem(where, f"expected a JSON object, found {_describe(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Problem(where, f"expected a JSON array, found {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_id(
    value: Any, size: int, where: str, owner: str = "", *, optional: bool = False
) -> int | None:
    if value is None or value == "":
        if optional:
            return None
        raise _Problem(where, "missing")
    if not isinstance(value, str):
        raise _Problem(where, f"expected an id string, found {_describe(value)}")
    if len(value) == size * 2:
        # Exactly the hex digits: int() alone would also take "-...", "0x..." and "_".
        if not _HEX_ID[size].fullmatch(value):
            raise _Problem(
                where, f"expected {size * 2} hex digits, found {_describe(value)}{owner}"
            )
        number = int(value, 16)
    else:
        # Plain protobuf JSON (not OTLP JSON) writes bytes in base64: accept that too.
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != size:
            raise _Problem(
                where, f"expected {size * 2} hex digits, found {_describe(value)}{owner}"
            )
        number = int.from_bytes(raw, "big")
    if number == 0 and not optional:  # a parent of 0 is kept: a missing parent (detached)
        raise _Problem(where, f"all zero, which is not a valid id: {_describe(value)}{owner}")
    return number


def _parse_uint(value: Any, where: str, *, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise _Problem(where, "missing")
        return default
    if isinstance(value, bool):
        raise _Problem(where, f"expected an integer, found {_describe(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            raise _Problem(where, f"expected an integer, found {_describe(value)}") from None
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise _Problem(where, f"expected an integer, found {_describe(value)}")
    if number < 0:
        raise _Problem(where, f"negative: {number}")
    return number


def _parse_double(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise _Problem(where, f"expected a number, found {_describe(value)}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # accepts "NaN", "Infinity", "-Infinity"
        except ValueError:
            pass
    raise _Problem(where, f"expected a number, found {_describe(value)}")


def decode_value(value: Any, where: str = "value") -> Any:
    """An OTLP JSON `AnyValue` as a Python value (arrays as tuples, kvlists as dicts)."""
    obj = _object(value, where)
    if not obj:
        return None
    if len(obj) != 1:
        raise _Problem(where, f"an AnyValue holds one value, found {sorted(obj)}")
    kind, inner = next(iter(obj.items()))
    if kind in ("stringValue", "string_value"):
        if not isinstance(inner, str):
            raise _Problem(where, f"stringValue is {_describe(inner)}")
        return inner
    if kind in ("boolValue", "bool_value"):
        if not isinstance(inner, bool):
            raise _Problem(where, f"boolValue is {_describe(inner)}")
        return inner
    if kind in ("intValue", "int_value"):
        if isinstance(inner, bool) or not isinstance(inner, int | str):
            raise _Problem(where, f"intValue is {_describe(inner)}")
        try:
            return int(inner)
        except ValueError:
            raise _Problem(where, f"intValue is {_describe(inner)}") from None
    if kind in ("doubleValue", "double_value"):
        return _parse_double(inner, f"{where}.doubleValue")
    if kind in ("arrayValue", "array_value"):
        items = _list(_object(inner, f"{where}.arrayValue").get("values"), f"{where}.values")
        return tuple(decode_value(item, f"{where}.values[{i}]") for i, item in enumerate(items))
    if kind in ("kvlistValue", "kvlist_value"):
        pairs = _object(inner, f"{where}.kvlistValue").get("values")
        return decode_attributes(pairs, f"{where}.kvlistValue")
    if kind in ("bytesValue", "bytes_value"):
        if not isinstance(inner, str):
            raise _Problem(where, f"bytesValue is {_describe(inner)}")
        try:
            return base64.b64decode(inner, validate=True)
        except (binascii.Error, ValueError):
            raise _Problem(where, "bytesValue is not base64") from None
    raise _Problem(where, f"unknown AnyValue field {kind!r}")


def decode_attributes(value: Any, where: str = "attributes") -> dict[str, Any]:
    """An OTLP JSON list of `{key, value}` as a dict."""
    attributes: dict[str, Any] = {}
    for index, item in enumerate(_list(value, where)):
        here = f"{where}[{index}]"
        pair = _object(item, here)
        key = pair.get("key")
        if not isinstance(key, str):
            raise _Problem(here, f"key is {_describe(key)}")
        attributes[key] = decode_value(pair.get("value", {}), f"{here}.value")
    return attributes


def _decode_span(
    span: Any, where: str, resource: Mapping[str, Any], scope: str | None
) -> SpanRecord:
    obj = _object(span, where)
    name = obj.get("name", "")
    owner = f" (span {_describe(name)})" if isinstance(name, str) else ""
    trace_id = _parse_id(_field(obj, "traceId", "trace_id"), 16, f"{where}.traceId", owner)
    span_id = _parse_id(_field(obj, "spanId", "span_id"), 8, f"{where}.spanId", owner)
    parent = _parse_id(
        _field(obj, "parentSpanId", "parent_span_id"),
        8,
        f"{where}.parentSpanId",
        owner,
        optional=True,
    )
    if not isinstance(name, str):
        raise _Problem(f"{where}.name", f"expected a string, found {_describe(name)}")
    start = _parse_uint(
        _field(obj, "startTimeUnixNano", "start_time_unix_nano"),
        f"{where}.startTimeUnixNano",
        default=0,
    )
    end = _parse_uint(
        _field(obj, "endTimeUnixNano", "end_time_unix_nano"), f"{where}.endTimeUnixNano", default=0
    )
    kind_value = obj.get("kind", 0)
    if isinstance(kind_value, str) and kind_value.startswith("SPAN_KIND_"):
        kind = kind_value.removeprefix("SPAN_KIND_")
    else:
        kind_code = _parse_uint(kind_value, f"{where}.kind")
        if kind_code not in _CODE_TO_KIND:
            raise _Problem(f"{where}.kind", f"unknown span kind {kind_code}")
        kind = _CODE_TO_KIND[kind_code]
    if kind not in _KIND_TO_CODE:
        raise _Problem(f"{where}.kind", f"unknown span kind {kind_value!r}")

    status_obj = _object(obj.get("status") or {}, f"{where}.status")
    code_value = status_obj.get("code", 0)
    if isinstance(code_value, str) and code_value.startswith("STATUS_CODE_"):
        status_name = code_value.removeprefix("STATUS_CODE_")
        if status_name not in _STATUS_TO_CODE:
            raise _Problem(f"{where}.status.code", f"unknown status code {code_value!r}")
        status: StatusCode = _CODE_TO_STATUS[_STATUS_TO_CODE[status_name]]
    else:
        code = _parse_uint(code_value, f"{where}.status.code")
        if code not in _CODE_TO_STATUS:
            raise _Problem(f"{where}.status.code", f"unknown status code {code}")
        status = _CODE_TO_STATUS[code]
    message = status_obj.get("message")
    if message is not None and not isinstance(message, str):
        raise _Problem(f"{where}.status.message", f"expected a string, found {_describe(message)}")

    events = []
    for index, event in enumerate(_list(obj.get("events"), f"{where}.events")):
        here = f"{where}.events[{index}]"
        event_obj = _object(event, here)
        event_name = event_obj.get("name", "")
        if not isinstance(event_name, str):
            raise _Problem(f"{here}.name", f"expected a string, found {_describe(event_name)}")
        events.append(
            SpanEvent(
                event_name,
                _parse_uint(
                    _field(event_obj, "timeUnixNano", "time_unix_nano"),
                    f"{here}.timeUnixNano",
                    default=0,
                ),
                decode_attributes(event_obj.get("attributes"), f"{here}.attributes"),
            )
        )
    assert trace_id is not None and span_id is not None
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        start_time_ns=start,
        end_time_ns=end or None,
        status=status,
        status_message=message,
        attributes=decode_attributes(obj.get("attributes"), f"{where}.attributes"),
        events=tuple(events),
        kind=kind,
        scope=scope,
        resource=resource,
    )


class _TraceParts:
    __slots__ = ("name", "records", "root_span_id", "trace_id")

    def __init__(self, trace_id: int) -> None:
        self.trace_id = trace_id
        self.name: str | None = None
        self.root_span_id: int | None = None
        self.records: dict[int, SpanRecord] = {}


def _decode_request(request: Any, where: str, traces: dict[int, _TraceParts]) -> None:
    obj = _object(request, where)
    if "resourceSpans" not in obj and "resource_spans" not in obj:
        raise _Problem(where, "not an OTLP trace request (no resourceSpans)")
    resource_spans = _list(_field(obj, "resourceSpans", "resource_spans"), f"{where}.resourceSpans")
    for r_index, resource_item in enumerate(resource_spans):
        r_where = f"{where}.resourceSpans[{r_index}]"
        resource_obj = _object(resource_item, r_where)
        resource = decode_attributes(
            _object(resource_obj.get("resource") or {}, f"{r_where}.resource").get("attributes"),
            f"{r_where}.resource.attributes",
        )
        scope_spans = _list(
            _field(resource_obj, "scopeSpans", "scope_spans")
            # Files from before OTLP 1.0 call them instrumentationLibrarySpans.
            or _field(resource_obj, "instrumentationLibrarySpans", "instrumentation_library_spans"),
            f"{r_where}.scopeSpans",
        )
        for s_index, scope_item in enumerate(scope_spans):
            s_where = f"{r_where}.scopeSpans[{s_index}]"
            scope_obj = _object(scope_item, s_where)
            scope_info = _object(
                scope_obj.get("scope") or scope_obj.get("instrumentationLibrary") or {},
                f"{s_where}.scope",
            )
            scope_name = scope_info.get("name")
            if scope_name is not None and not isinstance(scope_name, str):
                raise _Problem(
                    f"{s_where}.scope.name", f"expected a string: {_describe(scope_name)}"
                )
            metadata = decode_attributes(
                scope_info.get("attributes"), f"{s_where}.scope.attributes"
            )
            meta_trace_id = _meta_id(metadata, TRACE_ID_KEY, 16, f"{s_where}.scope")
            if meta_trace_id is not None:
                parts = _parts(traces, meta_trace_id)
                name = metadata.get(TRACE_NAME_KEY)
                if isinstance(name, str):
                    parts.name = name
                root_id = _meta_id(metadata, ROOT_SPAN_ID_KEY, 8, f"{s_where}.scope")
                if root_id is not None:
                    parts.root_span_id = root_id
            spans = _list(scope_obj.get("spans"), f"{s_where}.spans")
            for index, span in enumerate(spans):
                record = _decode_span(
                    span, f"{s_where}.spans[{index}]", resource, scope_name or None
                )
                # Our files say which trace a scope's spans belong to; others go by id.
                parts = _parts(
                    traces, meta_trace_id if meta_trace_id is not None else record.trace_id
                )
                existing = parts.records.get(record.span_id)
                # The same span saved running and again ended: the ended copy wins.
                if existing is None or existing.end_time_ns is None:
                    parts.records[record.span_id] = record


def _parts(traces: dict[int, _TraceParts], trace_id: int) -> _TraceParts:
    parts = traces.get(trace_id)
    if parts is None:
        parts = traces[trace_id] = _TraceParts(trace_id)
    return parts


def _meta_id(metadata: Mapping[str, Any], key: str, size: int, where: str) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    return _parse_id(value, size, f"{where} attribute {key}")


def _requests_in(text: str) -> Iterable[tuple[str, Any]]:
    """(where, request) pairs: one JSON document (object or array), or JSON lines."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as whole_error:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not lines:
            raise _Problem("file", "empty") from None
        parsed = []
        for position, (number, line) in enumerate(lines):
            try:
                parsed.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as line_error:
                # A pretty-printed document fails on its first line: report the document.
                error = whole_error if position == 0 else line_error
                place = "file" if position == 0 else f"line {number}"
                raise _Problem(
                    place, f"not valid JSON, the file may be truncated ({error})"
                ) from None
        return parsed
    if isinstance(document, list):
        return [(f"request [{index}]", item) for index, item in enumerate(document)]
    return [("file", document)]


def _max_bytes(max_bytes: int | None) -> int:
    """The cap on a document's size: `max_bytes`, else the environment's, else the default."""
    if max_bytes is None:
        setting = os.environ.get(MAX_BYTES_ENV, "").strip()
        if not setting:
            return DEFAULT_MAX_BYTES
        try:
            max_bytes = int(setting)
        except ValueError:
            raise ValueError(
                f"{MAX_BYTES_ENV}={setting!r}: expected a whole number of bytes"
            ) from None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int (bytes), not {type(max_bytes).__name__}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, not {max_bytes}")
    return max_bytes


def _too_big(path: Path, limit: int, what: str) -> TraceFileError:
    return TraceFileError(
        f"{path}: {what} is larger than the limit of {limit:,} bytes; to load it, pass a "
        f"larger max_bytes= to load()/load_all() or set {MAX_BYTES_ENV}"
    )


def _inflate(path: Path, limit: int) -> bytes:
    """The gzip file at `path` decompressed, refused as soon as it passes `limit` bytes."""
    with path.open("rb") as file, gzip.GzipFile(fileobj=file, mode="rb") as stream:
        kept = stream.read(min(limit, _KEEP) + 1)
        if len(kept) <= min(limit, _KEEP):
            return kept
        # Big: measure the rest without keeping it, then read it again, bounded.
        size = len(kept)
        del kept
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_big(path, limit, "the document, decompressed,")
        if size > limit:
            raise _too_big(path, limit, "the document, decompressed,")
        stream.seek(0)
        raw = stream.read(limit + 1)
    if len(raw) > limit:  # the file grew in between
        raise _too_big(path, limit, "the document, decompressed,")
    return raw


def _read_text(path: Path, limit: int) -> str:
    with path.open("rb") as file:
        compressed = file.read(2) == b"\x1f\x8b"
        if not compressed:
            if os.fstat(file.fileno()).st_size > limit:
                raise _too_big(path, limit, "the document")
            file.seek(0)
            raw = file.read(limit + 1)
            if len(raw) > limit:
                raise _too_big(path, limit, "the document")
    if compressed:
        try:
            raw = _inflate(path, limit)
        except (OSError, EOFError, zlib.error) as error:
            raise TraceFileError(f"{path}: gzip data is damaged or truncated ({error})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TraceFileError(f"{path}: not UTF-8 text ({error})") from None


def _parse_file(path: str | os.PathLike[str], max_bytes: int | None) -> list[_TraceParts]:
    limit = _max_bytes(max_bytes)
    file = Path(path).expanduser()
    text = _read_text(file, limit)
    traces: dict[int, _TraceParts] = {}
    try:
        for where, request in _requests_in(text):
            _decode_request(request, where, traces)
    except _Problem as problem:
        raise TraceFileError(f"{file}: {problem}") from None
    except RecursionError:
        raise TraceFileError(f"{file}: attributes nested too deeply") from None
    if not traces:
        raise TraceFileError(f"{file}: holds no spans")
    return list(traces.values())


def _build(parts: _TraceParts) -> Trace:
    records = list(parts.records.values())
    root_span_id = parts.root_span_id
    if root_span_id is None and parts.name is None:  # another tool's file: infer
        marked = [r for r in records if r.parent_span_id is None and r.attributes.get(ROOT_MARKER)]
        tops = [r for r in records if r.parent_span_id is None]
        if marked:
            root_span_id = min(marked, key=lambda r: (r.start_time_ns, r.span_id)).span_id
        elif len(tops) == 1:
            root_span_id = tops[0].span_id
    name = parts.name
    if name is None:
        root = parts.records.get(root_span_id) if root_span_id is not None else None
        name = root.name if root is not None else "trace"
    trace = Trace(
        parts.trace_id, name, root_span_id=root_span_id, records=records, user_prices=user_prices
    )
    trace.closed = True
    return trace


def load_all(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> list[Trace]:
    """Every trace in an OTLP JSON file, in order of first appearance.

    Raises `TraceFileError` (a `ValueError`) if the file is not valid OTLP JSON traces,
    or if its document (decompressed) is bigger than `max_bytes` (see `load`);
    nothing is returned half-loaded.
    """
    return [_build(parts) for parts in _parse_file(path, max_bytes)]


def load(
    path: str | os.PathLike[str],
    trace_id: int | str | None = None,
    *,
    max_bytes: int | None = None,
) -> Trace:
    """Load a trace saved with `Trace.save` (or any OTLP JSON traces file).

    With several traces in the file, returns the first one, or the one with
    `trace_id` (an int or 32 hex digits); see `load_all` for all of them. A document
    (after gzip) bigger than `max_bytes` is refused with `TraceFileError` while it is
    read; the default is `AGENTA_NOTEBOOK_MAX_LOAD_BYTES` if set, else 2 GiB.

    >>> import agenta_notebook as an, tempfile, os
    >>> with an.trace("saved") as t, an.span("call", type="llm"):
    ...     an.record_usage(model="gpt-4o", input_tokens=10, output_tokens=5)
    >>> path = os.path.join(tempfile.mkdtemp(), "t.json")
    >>> t.save(path)
    >>> an.load(path).totals.total_tokens
    15
    """
    traces = _parse_file(path, max_bytes)
    if trace_id is None:
        return _build(traces[0])
    wanted = int(trace_id, 16) if isinstance(trace_id, str) else trace_id
    for parts in traces:
        if parts.trace_id == wanted:
            return _build(parts)
    raise KeyError(f"{path}: no trace with id {wanted:032x}")
