"""The details pane of one span: what the widget shows below a clicked row.

It is written for people, not for the wire: chat messages as a conversation (whichever
convention recorded them: OpenInference, the GenAI semantic conventions' attributes and
events, OpenLLMetry's indexed keys, Agenta's `ag.data.inputs` / `ag.data.outputs`), the
arguments and return value of a function, long values wrapped and folded, statuses and
roll-up roles in plain words, tracebacks without our own wrapper frames; every attribute
as recorded stays available in a closed "all attributes" section.

Everything here is a pure function of a `SpanNode`; every string from a span goes through
`escape` (see `views/html.py`) and every piece has a size cap, so the pane of a span with
huge attributes stays small.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from agenta_notebook.core.fields import FIGURES, Figure
from agenta_notebook.core.rollup import Figures, SpanEvent, SpanNode
from agenta_notebook.core.usage import AG_INPUTS, AG_JSON_PREFIX, AG_OUTPUTS
from agenta_notebook.views.html import (
    MAX_VALUE,
    escape,
    format_cost,
    format_duration,
    format_figure,
    format_tokens,
    markers_html,
    shown_where_present,
)

MAX_ATTRIBUTES: Final = 200
MAX_EVENTS: Final = 50
MAX_STACKTRACE: Final = 20_000
#: At most this many messages in a conversation, then "… N more messages".
MAX_MESSAGES: Final = 60
#: Longest message content (or tool-call arguments) shown.
MAX_MESSAGE: Final = 8_000
#: The conversation, the attributes table and the events stop adding entries once their
#: markup is this long (characters), then say how many more there are.
MAX_SECTION: Final = 60_000
#: At most this many arguments in an inputs / outputs list.
MAX_ARGUMENTS: Final = 40
#: A value longer than this, or with more lines than `FOLD_LINES`, is folded.
FOLD_CHARS: Final = 300
FOLD_LINES: Final = 4
#: JSON text longer than this is shown as it is, not parsed and pretty-printed.
MAX_JSON: Final = 200_000
#: Agenta's SDK marks a JSON-encoded attribute value with this prefix.
#: What stands for a value nested too deeply to show (see "all attributes" for its text).
TOO_DEEP: Final = "(nested too deeply to show here; its text is under all attributes)"

#: Where our own code lives: traceback frames in these files are hidden in the pane.
PACKAGE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGE_DIRS: Final = tuple({PACKAGE_DIR + os.sep, os.path.realpath(PACKAGE_DIR) + os.sep})

RoleClass = Literal["system", "user", "assistant", "tool", "other"]

_ROLE_CLASSES: Final[Mapping[str, RoleClass]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
}

#: The GenAI conventions' message events and the role each one carries.
_EVENT_ROLES: Final[Mapping[str, str]] = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}

#: What a roll-up role means, in a sentence (nothing for "none").
ROLE_SENTENCES: Final[Mapping[str, str]] = {
    "model call": "A model call: its usage is counted here.",
    "unreported model call": (
        "A model call that reported no usage: counted as one call, without a price."
    ),
    "failed model call": (
        "A model call that failed before any usage: counted as one call, nothing to price."
    ),
    "refused by budget": (
        "A request the trace's budget refused before it was sent: no call, nothing to price."
    ),
    "model call wrapper": (
        "Wraps the model calls below it: their usage is counted there (not added twice)."
    ),
    "recorded twice": (
        "The same call as another span, recorded by another library: counted there "
        "(not added twice)."
    ),
    "claim counted": "Reports usage that no span below it reports: counted here.",
    "claim not counted": (
        "Reports usage that the spans below it also report: counted there (not added twice)."
    ),
}

#: Where a model call's cost came from, in words.
PRICE_SOURCES: Final[Mapping[str, str]] = {
    "reported": "cost as reported by the span",
    "override": "priced with the prices you set",
    "price table": "priced from the price table",
    "unpriced": "no price known for this model (unpriced)",
}


# -- values ---------------------------------------------------------------------------------


def json_value(value: Any) -> Any:
    """`value` decoded when it is JSON text (Agenta's `@ag.type=json:` prefix or a string
    that starts like a JSON object or array); otherwise `value` itself. Text that is not
    JSON, or nested too deeply for `json` to read (a RecursionError), stays text."""
    if not isinstance(value, str):
        return value
    text = value[len(AG_JSON_PREFIX) :] if value.startswith(AG_JSON_PREFIX) else value
    stripped = text.strip()
    if (stripped[:1] in ("{", "[") or text is not value) and len(stripped) <= MAX_JSON:
        try:
            return json.loads(stripped)
        except (ValueError, RecursionError):
            return text
    return text


def value_text(value: Any) -> str:
    """A value as readable text: JSON (and JSON text) pretty-printed, strings as they are.
    A value nested too deeply to print shows as the text it came from (or a note)."""
    decoded = json_value(value)
    if isinstance(decoded, str):
        return decoded
    if isinstance(decoded, tuple):
        decoded = list(decoded)
    try:
        try:
            return json.dumps(decoded, indent=2, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):  # a value json cannot walk (a cycle): its repr
            return repr(decoded)
    except RecursionError:
        if isinstance(value, str):
            return value[len(AG_JSON_PREFIX) :] if value.startswith(AG_JSON_PREFIX) else value
        return TOO_DEEP


def value_html(value: Any, limit: int = MAX_VALUE) -> str:
    """One value, wrapped (never cut at the edge); a long one folded in a `<details>`
    whose summary shows its first `FOLD_CHARS` characters."""
    text = value_text(value)
    if len(text) <= FOLD_CHARS and text.count("\n") < FOLD_LINES:
        return f'<div class="agn-v">{escape(text, limit)}</div>'
    preview = text[:FOLD_CHARS].rstrip()
    size = f"{len(text):,} characters" + (f", shown up to {limit:,}" if len(text) > limit else "")
    return (
        '<details class="agn-v-fold"><summary><span class="agn-v-preview">'
        f'{escape(preview, FOLD_CHARS)}…</span> <span class="agn-v-size">({size})</span>'
        f'</summary><div class="agn-v">{escape(text, limit)}</div></details>'
    )


def _unflatten(attributes: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The keys under `prefix` (`prefix` + "a.0.b") as nested dictionaries."""
    root: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split(".")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return root


def _items(value: Any) -> list[Any]:
    """A list, or a dictionary keyed by indices ("0", "1", ...), as a list in index order."""
    value = json_value(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        indexed = [(int(k), v) for k, v in value.items() if isinstance(k, str) and k.isdigit()]
        return [v for _, v in sorted(indexed, key=lambda item: item[0])]
    return []


# -- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call requested by a message: the tool's name and its arguments."""

    name: str
    arguments: Any = None
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message, whatever convention recorded it."""

    role: str
    content: Any = None
    tool_calls: tuple[ToolCall, ...] = ()
    name: str | None = None
    call_id: str | None = None  # the tool call a tool message answers

    @property
    def role_class(self) -> RoleClass:
        return _ROLE_CLASSES.get(self.role.lower(), "other")


def _text(content: Any) -> Any:
    """Message content as text where it is text parts (OpenAI's `[{"type": "text",
    "text": ...}]`, OpenInference's `message_content`, GenAI parts), else as it is."""
    content = json_value(content)
    parts = _items(content) if isinstance(content, (list, tuple)) else None
    if parts is None:
        return content
    texts = []
    for part in parts:
        part = part.get("message_content", part) if isinstance(part, dict) else part
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, dict) and isinstance(part.get("content"), str):
            texts.append(part["content"])
        elif isinstance(part, dict):
            texts.append(f"[{part.get('type', 'part')}]")
        else:
            return content
    return "\n".join(texts)


def _tool_call(call: Any) -> ToolCall | None:
    """One tool call: OpenAI's `{"function": {"name", "arguments"}}`, OpenInference's
    `tool_call.function.*`, OpenLLMetry's `{"name", "arguments"}`."""
    if not isinstance(call, dict):
        return None
    call = call.get("tool_call", call)
    function = call.get("function")
    source = function if isinstance(function, dict) else call
    name = source.get("name")
    if name is None:
        return None
    return ToolCall(str(name), source.get("arguments"), _opt_str(call.get("id")))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _message(data: Any, role: str | None = None) -> Message | None:
    """One message from a dictionary in any of the shapes above, or None."""
    if not isinstance(data, dict):
        return None
    data = data.get("message", data) if isinstance(data.get("message"), dict) else data
    role = str(data.get("role") or role or "")
    if not role:
        return None
    parts = _items(data.get("parts"))
    if parts:  # the GenAI conventions: role + parts
        return _parts_message(role, parts, data.get("name"))
    content = data.get("content")
    if content is None and "contents" in data:
        content = _items(data["contents"])
    calls = tuple(call for call in (_tool_call(c) for c in _items(data.get("tool_calls"))) if call)
    if content is None and not calls:
        return Message(role)
    return Message(
        role,
        _text(content),
        calls,
        _opt_str(data.get("name")),
        _opt_str(data.get("tool_call_id") or data.get("id")) if role == "tool" else None,
    )


def _parts_message(role: str, parts: Sequence[Any], name: Any = None) -> Message:
    """A GenAI-conventions message: text parts joined, tool calls as tool calls, a tool
    call's response as the content."""
    texts: list[Any] = []
    calls: list[ToolCall] = []
    answers: str | None = None
    for part in parts:
        if not isinstance(part, dict):
            texts.append(part)
            continue
        kind = part.get("type")
        if kind == "tool_call":
            calls.append(ToolCall(str(part.get("name")), part.get("arguments"), part.get("id")))
        elif kind == "tool_call_response":
            answers = _opt_str(part.get("id"))
            texts.append(part.get("response"))
        elif "content" in part:
            texts.append(part["content"])
        else:
            texts.append(f"[{kind or 'part'}]")
    content: Any = None
    if len(texts) == 1:
        content = texts[0]
    elif texts:
        content = "\n".join(t if isinstance(t, str) else value_text(t) for t in texts)
    return Message(role, content, tuple(calls), _opt_str(name), answers)


def _messages(items: Iterable[Any]) -> list[Message]:
    return [m for m in (_message(item) for item in items) if m is not None]


def _indexed(attributes: Mapping[str, Any], key: str) -> list[Message]:
    """Messages under indexed keys: `key.0.message.role` (OpenInference) or `key.0.role`
    (OpenLLMetry)."""
    return _messages(_items(_unflatten(attributes, key + ".")))


def _genai(attributes: Mapping[str, Any], key: str) -> list[Message]:
    return _messages(_items(attributes.get(key)))


def _system_instructions(attributes: Mapping[str, Any]) -> list[Message]:
    value = json_value(attributes.get("gen_ai.system_instructions"))
    if value is None:
        return []
    if isinstance(value, str):
        return [Message("system", value)]
    return [_parts_message("system", _items(value))]


def _event_body(event: SpanEvent) -> dict[str, Any]:
    """An event's body: its attributes (nested), plus a JSON body where one was put in an
    attribute (`body`, `gen_ai.event.content`)."""
    body = _unflatten(event.attributes, "")
    for key in ("body", "gen_ai.event.content"):
        extra = json_value(event.attributes.get(key))
        if isinstance(extra, dict):
            body.update(extra)
    return body


def _events(events: Sequence[SpanEvent], output: bool) -> list[Message]:
    """Messages recorded as span events: the GenAI conventions' `gen_ai.*.message` and
    `gen_ai.choice` events, and the older `gen_ai.content.prompt` / `.completion`."""
    found: list[Message] = []
    for event in events:
        if output and event.name == "gen_ai.choice":
            body = _event_body(event)
            message = body.get("message", body)
            found.extend(
                _messages([json_value(message)]) or _messages([{"role": "assistant", **body}])
            )
        elif not output and event.name in _EVENT_ROLES:
            found.extend(_messages([{"role": _EVENT_ROLES[event.name], **_event_body(event)}]))
        elif event.name == ("gen_ai.content.completion" if output else "gen_ai.content.prompt"):
            key = "gen_ai.completion" if output else "gen_ai.prompt"
            found.extend(_messages(_items(event.attributes.get(key))))
        if len(found) > MAX_MESSAGES:
            break
    return found


def _body_messages(value: Any, output: bool) -> list[Message]:
    """A chat request body's `messages`, or a chat response's `choices[].message`."""
    value = json_value(value)
    if not isinstance(value, dict):
        return []
    if output:
        return _messages(
            choice.get("message")
            for choice in _items(value.get("choices"))
            if isinstance(choice, dict)
        )
    return _messages(_items(value.get("messages")))


def _agenta(attributes: Mapping[str, Any], key: str) -> Any:
    """Agenta's `ag.data.inputs` / `ag.data.outputs`: the flattened keys, and a value of
    the key itself, as one value (None when the span has none)."""
    whole = json_value(attributes.get(key))
    nested = _unflatten(attributes, key + ".")
    if not nested:
        return whole
    decoded = _decoded(nested)
    if isinstance(whole, dict):
        return {**whole, **decoded}
    return decoded


def _decoded(value: Any) -> Any:
    """Unflattened values decoded: JSON text parsed, a dictionary keyed "0", "1", ... (a
    list flattened by Agenta's SDK) a list again."""
    if isinstance(value, dict):
        if (
            value
            and all(k.isdigit() for k in value)
            and _items(value)
            and len(value) == len(_items(value))
        ):
            return [_decoded(item) for item in _items(value)]
        return {k: _decoded(v) for k, v in value.items()}
    return json_value(value)


def _chat_list(value: Any) -> list[Message]:
    """Messages when `value` is a list of role/content dictionaries, else none."""
    items = _items(value) if isinstance(value, (list, tuple, dict)) else []
    if isinstance(value, dict) and not items:
        return []
    messages = _messages(items)
    return messages if items and len(messages) == len(items) else []


def input_messages(node: SpanNode) -> list[Message]:
    """The chat messages a span sent, from the first convention that recorded them."""
    attributes = node.record.attributes
    return (
        _indexed(attributes, "llm.input_messages")  # OpenInference
        or _system_instructions(attributes) + _genai(attributes, "gen_ai.input.messages")
        or _indexed(attributes, "gen_ai.prompt")  # OpenLLMetry's indexed keys
        or _events(node.record.events, output=False)
        or _body_messages(attributes.get("input.value"), output=False)
    )


def output_messages(node: SpanNode) -> list[Message]:
    """The chat messages a span received, from the first convention that recorded them."""
    attributes = node.record.attributes
    return (
        _indexed(attributes, "llm.output_messages")
        or _genai(attributes, "gen_ai.output.messages")
        or _indexed(attributes, "gen_ai.completion")
        or _events(node.record.events, output=True)
        or _body_messages(attributes.get("output.value"), output=True)
    )


# -- rendering ------------------------------------------------------------------------------


def _tool_call_html(call: ToolCall) -> str:
    arguments = "" if call.arguments is None else value_html(call.arguments, MAX_MESSAGE)
    return (
        f'<div class="agn-tool-call"><span class="agn-tool-name">→ {escape(call.name, 200)}'
        f"</span>{arguments}</div>"
    )


def message_html(message: Message, output: bool = False) -> str:
    """One message: a role label, its content wrapped (folded when long), its tool calls."""
    label = escape(message.role, 40)
    if message.name:
        label += f" · {escape(message.name, 100)}"
    if message.call_id:
        label += f' <span class="agn-msg-id">answers {escape(message.call_id, 100)}</span>'
    if output:
        label += ' <span class="agn-msg-id">reply</span>'
    body = "" if message.content in (None, "") else value_html(message.content, MAX_MESSAGE)
    calls = "".join(_tool_call_html(call) for call in message.tool_calls[:20])
    return (
        f'<div class="agn-msg agn-msg-{message.role_class}'
        + (" agn-msg-out" if output else "")
        + f'"><div class="agn-msg-role">{label}</div>{body}{calls}</div>'
    )


def conversation_html(inputs: Sequence[Message], outputs: Sequence[Message]) -> str:
    """The messages sent, then the messages received, as one conversation."""
    shown = [(m, False) for m in inputs] + [(m, True) for m in outputs]
    parts = _within_budget(
        (message_html(message, output) for message, output in shown[:MAX_MESSAGES]),
        MAX_SECTION,
    )
    if len(shown) > len(parts):
        parts.append(f'<div class="agn-more">… {len(shown) - len(parts):,} more messages</div>')
    return f'<div class="agn-conversation">{"".join(parts)}</div>'


def _within_budget(pieces: Iterable[str], budget: int) -> list[str]:
    """The first `pieces` whose total length stays within `budget` (at least one)."""
    kept: list[str] = []
    size = 0
    for piece in pieces:
        size += len(piece)
        if kept and size > budget:
            break
        kept.append(piece)
    return kept


def arguments_html(value: Any) -> str:
    """Inputs or outputs as a key/value list (a dictionary), or one value."""
    if not isinstance(value, dict):
        return value_html(value, MAX_MESSAGE)
    return _key_value_table(
        list(value.items()), MAX_ARGUMENTS, lambda item: value_html(item, MAX_MESSAGE), "agn-args"
    )


def _key_value_table(
    items: list[tuple[Any, Any]], limit: int, cell: Callable[[Any], str], css: str
) -> str:
    """A two-column table of `items` (key, value HTML from `cell`), at most `limit` rows
    and `MAX_SECTION` characters, then how many more; "none" when empty."""
    rows = _within_budget(
        (
            f"<tr><th>{escape(key, 200)}</th><td>{cell(value)}</td></tr>"
            for key, value in items[:limit]
        ),
        MAX_SECTION,
    )
    if len(items) > len(rows):
        rows.append(f'<tr><td colspan="2">… {len(items) - len(rows):,} more</td></tr>')
    return f'<table class="{css}">{"".join(rows)}</table>' if rows else "<i>none</i>"


def _data_section(title: str, value: Any) -> tuple[list[Message], str]:
    """Agenta-style inputs or outputs: the chat messages in them (a `messages` or
    `prompt` list of role/content) and the section showing everything else."""
    messages: list[Message] = []
    rest = value
    if isinstance(value, dict):
        if set(value) == {"__default__"}:
            rest = value["__default__"]
        for key in ("messages", "prompt"):
            if isinstance(rest, dict) and key in rest:
                messages = _chat_list(rest[key])
                if messages:
                    rest = {k: v for k, v in rest.items() if k != key}
                    break
    if not messages:
        single = _message(rest) if isinstance(rest, dict) and "role" in rest else None
        messages = [single] if single else _chat_list(rest)
        if messages:
            rest = None
    if rest in (None, {}):
        return messages, ""
    return messages, (
        f'<div class="agn-d-section agn-d-{title}"><div class="agn-d-h">{title}</div>'
        f"{arguments_html(rest)}</div>"
    )


def _value_section(title: str, value: Any) -> str:
    return (
        f'<div class="agn-d-section agn-d-{title}"><div class="agn-d-h">{title}</div>'
        f"{value_html(value, MAX_MESSAGE)}</div>"
    )


def content_html(node: SpanNode) -> str:
    """What went in and what came out: a conversation, inputs / outputs lists, and the
    `input.value` / `output.value` of a span that has no messages."""
    attributes = node.record.attributes
    inputs, outputs = input_messages(node), output_messages(node)
    sections: list[str] = []
    agenta_in, agenta_out = (
        _agenta(attributes, AG_INPUTS),
        _agenta(attributes, AG_OUTPUTS),
    )
    if agenta_in is not None:
        found, section = _data_section("inputs", agenta_in)
        inputs = inputs or found
        sections.append(section)
    elif not inputs and attributes.get("input.value") is not None:
        sections.append(_value_section("input", attributes["input.value"]))
    if agenta_out is not None:
        found, section = _data_section("outputs", agenta_out)
        outputs = outputs or found
        sections.append(section)
    elif not outputs and attributes.get("output.value") is not None:
        sections.append(_value_section("output", attributes["output.value"]))
    conversation = conversation_html(inputs, outputs) if inputs or outputs else ""
    return conversation + "".join(sections)


def _content_or_note(node: SpanNode) -> str:
    """`content_html`, or a note where a value is nested too deeply to walk (its text is
    still under "all attributes")."""
    try:
        return content_html(node)
    except RecursionError:
        return f'<div class="agn-d-section"><i>{TOO_DEEP}</i></div>'


def figures_table_html(own: Figures, subtotal: Figures, table: Sequence[Figure] = FIGURES) -> str:
    """The details pane's figures: one row per figure, own (counted) and subtotal."""
    rows = []
    for figure in table:
        own_value, subtotal_value = getattr(own, figure.name), getattr(subtotal, figure.name)
        if own_value is None and subtotal_value is None and shown_where_present(figure):
            continue
        rows.append(
            f"<tr><th>{escape(figure.label)}</th><td>{escape(format_figure(figure, own_value))}"
            f"</td><td>{escape(format_figure(figure, subtotal_value))}</td></tr>"
        )
    return (
        '<table class="agn-figures"><thead><tr><th></th><th>own (counted)</th>'
        f"<th>subtotal</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _raw_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(repr(item) for item in value) + "]"
    return repr(value)


def _attributes_table(attributes: Mapping[str, Any], css: str = "agn-attrs") -> str:
    items = sorted(attributes.items(), key=lambda item: str(item[0]))
    return _key_value_table(items, MAX_ATTRIBUTES, lambda value: value_html(_raw_text(value)), css)


# -- tracebacks -----------------------------------------------------------------------------

_FRAME: Final = re.compile(r'^  File "([^"]*)", line \d+')


def _ours(path: str) -> bool:
    return os.path.abspath(path).startswith(_PACKAGE_DIRS)


def hide_our_frames(stacktrace: str) -> tuple[str, int]:
    """`stacktrace` (Python's traceback text) without the frames whose file is inside
    this package (our wrappers), and how many were dropped; every other line kept."""
    kept: list[str] = []
    hidden = 0
    dropping = False
    for line in stacktrace.split("\n"):
        frame = _FRAME.match(line)
        if frame is not None:
            dropping = _ours(frame.group(1))
            hidden += dropping
        elif dropping and not line.startswith("    "):
            dropping = False
        if not dropping:
            kept.append(line)
    return "\n".join(kept), hidden


def _exception_html(event: SpanEvent) -> str:
    attributes = event.attributes
    kind = attributes.get("exception.type", "exception")
    message = attributes.get("exception.message", "")
    stacktrace = attributes.get("exception.stacktrace")
    text = f"<b>{escape(kind, 300)}</b>: {escape(message, MAX_VALUE)}"
    if stacktrace:
        shown, hidden = hide_our_frames(str(stacktrace))
        note = (
            f'<div class="agn-trace-note">({hidden} frame{"s" if hidden != 1 else ""} of '
            "agenta_notebook hidden)</div>"
            if hidden
            else ""
        )
        text += f'<pre class="agn-trace">{escape(shown, MAX_STACKTRACE)}</pre>{note}'
    return f'<div class="agn-exception">{text}</div>'


# -- the pane ---------------------------------------------------------------------------------


def status_words(node: SpanNode) -> str:
    """The span's status in plain words: "running", "ok", or "failed: <message>"."""
    record = node.record
    if node.running:
        return "running"
    if record.status == "ERROR":
        return "failed" + (f": {record.status_message}" if record.status_message else "")
    return "ok"


def pricing_html(node: SpanNode) -> str:
    """Model, provider and price source of a model call; for a span that claims usage
    counted below it, what it claims; nothing for any other span."""
    usage = node.usage
    if node.role == "claim not counted":
        return (
            f'<div class="agn-d-pricing">claims {format_tokens(usage.effective_total_tokens)} '
            f"tokens / {format_cost(usage.cost)} (not added: the spans below report it)</div>"
        )
    if not usage.is_model_call:
        return ""
    pricing = [f"model {escape(usage.model or 'unknown', 300)}"]
    if usage.provider:
        pricing.append(f"provider {escape(usage.provider, 300)}")
    if node.role == "model call":  # priced here (the other roles are priced elsewhere)
        pricing.append(PRICE_SOURCES.get(node.priced.source, escape(node.priced.source)))
        if node.priced.matched_model:
            pricing.append(f"as {escape(node.priced.matched_model, 300)}")
    elif node.role == "unreported model call":
        pricing.append("no usage reported (unpriced)")
    return f'<div class="agn-d-pricing">{" · ".join(pricing)}</div>'


def _events_html(node: SpanNode) -> str:
    record = node.record
    if not record.events:
        return ""
    items = _within_budget(
        (
            f"<li><b>{escape(e.name, 300)}</b> at +"
            f"{format_duration((e.timestamp_ns - record.start_time_ns) / 1e6)}"
            + (
                _attributes_table(e.attributes, "agn-attrs agn-event-attrs")
                if e.attributes and e.name != "exception"
                else ""
            )
            + "</li>"
            for e in record.events[:MAX_EVENTS]
        ),
        MAX_SECTION,
    )
    if len(record.events) > len(items):
        items.append(f"<li>… {len(record.events) - len(items):,} more events</li>")
    return (
        f'<details class="agn-d-events"><summary>events ({len(record.events):,})</summary>'
        f"<ul>{''.join(items)}</ul></details>"
    )


def _raw_html(node: SpanNode) -> str:
    record = node.record
    facts = [f"span {record.span_id:016x}", f"kind {escape(record.kind, 40)}"]
    facts.append(f"status {escape(record.status, 20)}")
    if record.scope:
        facts.append(f"recorded by {escape(record.scope, 200)}")
    if node.role != "none":
        facts.append(f"roll-up role {escape(node.role)}")
    return (
        f'<details class="agn-d-raw"><summary>all attributes ({len(record.attributes):,})'
        f'</summary><div class="agn-d-facts">{" · ".join(facts)}</div>'
        f"{_attributes_table(record.attributes)}</details>"
    )


def details_html(node: SpanNode) -> str:
    """Everything about one span, for people: status and role in words, figures own vs
    subtotal, pricing (model calls only), warnings, exceptions without our frames, the
    conversation or inputs / outputs, then events and all attributes, closed."""
    record = node.record
    parts = [
        f'<div class="agn-d-title">{escape(node.name, 400)}'
        + (f" <i>{escape(node.type)}</i>" if node.type else "")
        + "</div>"
    ]
    length = node.duration_ms  # a span ending before it starts (clock skew) lasts 0
    duration = "running" if node.running else format_duration(length and max(length, 0.0))
    status = status_words(node)
    parts.append(
        f'<div class="agn-d-meta"><span class="agn-d-status agn-d-status-'
        f'{"failed" if record.status == "ERROR" else "ok"}">{escape(status, 600)}</span>'
        f" · {duration}</div>"
    )
    sentence = ROLE_SENTENCES.get(node.role)
    if sentence:
        parts.append(f'<div class="agn-d-role">{sentence}</div>')
    marks = markers_html(node)
    if marks:
        parts.append(f'<div class="agn-d-marks">{marks}</div>')
    parts.append(figures_table_html(node.own, node.subtotal))
    parts.append(pricing_html(node))
    if node.warnings:
        items = "".join(f"<li>{escape(w, MAX_VALUE)}</li>" for w in node.warnings)
        parts.append(f'<div class="agn-d-warnings"><b>warnings</b><ul>{items}</ul></div>')
    exceptions = [e for e in record.events if e.name == "exception"]
    for event in exceptions[:5]:
        parts.append(_exception_html(event))
    parts.append(_content_or_note(node))
    parts.append(_events_html(node))
    parts.append(_raw_html(node))
    return f'<div class="agn-details">{"".join(parts)}</div>'


#: The pane's style rules, scoped under `.agn-root`; JupyterLab's theme variables with
#: light fallbacks, role colours as translucent tints so they read in dark themes too.
DETAILS_CSS: Final = (
    ".agn-root .agn-details .agn-d-meta{color:var(--jp-ui-font-color2,#555)}"
    ".agn-root .agn-details .agn-d-status-failed{color:var(--jp-error-color1,#c62828);"
    "font-weight:600}"
    ".agn-root .agn-details .agn-d-role{color:var(--jp-ui-font-color2,#555);font-style:italic}"
    ".agn-root .agn-details .agn-d-pricing{color:var(--jp-ui-font-color2,#555)}"
    ".agn-root .agn-details .agn-d-section{margin:6px 0}"
    ".agn-root .agn-details .agn-d-h{font-weight:600;margin:4px 0 2px}"
    ".agn-root .agn-conversation{display:flex;flex-direction:column;gap:6px;margin:6px 0;"
    "max-width:100%}"
    ".agn-root .agn-msg{border:1px solid var(--jp-border-color2,#e0e0e0);border-radius:6px;"
    "padding:4px 8px;border-left-width:4px;min-width:0;"
    "background:var(--jp-layout-color1,#fff);color:var(--jp-content-font-color1,#212121)}"
    ".agn-root .agn-msg-system{border-left-color:#8e8e8e;background:rgba(128,128,128,.08)}"
    ".agn-root .agn-msg-user{border-left-color:#1e88e5;background:rgba(30,136,229,.08)}"
    ".agn-root .agn-msg-assistant{border-left-color:#43a047;background:rgba(67,160,71,.08)}"
    ".agn-root .agn-msg-tool{border-left-color:#fb8c00;background:rgba(251,140,0,.08)}"
    ".agn-root .agn-msg-other{border-left-color:#8e24aa;background:rgba(142,36,170,.06)}"
    ".agn-root .agn-msg-role{font-size:11px;font-weight:600;text-transform:uppercase;"
    "letter-spacing:.03em;color:var(--jp-ui-font-color2,#616161)}"
    ".agn-root .agn-msg-id{font-weight:400;text-transform:none}"
    ".agn-root .agn-tool-call{margin-top:2px}"
    ".agn-root .agn-tool-name{font-family:var(--jp-code-font-family,monospace);"
    "font-weight:600}"
    ".agn-root .agn-details .agn-v{white-space:pre-wrap;overflow-wrap:anywhere;"
    "word-break:break-word;font-family:var(--jp-code-font-family,monospace);font-size:12px;"
    "max-height:360px;overflow-y:auto}"
    ".agn-root .agn-details .agn-v-fold>summary{cursor:pointer;white-space:pre-wrap;"
    "overflow-wrap:anywhere;font-family:var(--jp-code-font-family,monospace);font-size:12px}"
    ".agn-root .agn-details .agn-v-fold[open]>summary .agn-v-preview{display:none}"
    ".agn-root .agn-details .agn-v-size{color:var(--jp-ui-font-color2,#757575);"
    "font-family:var(--jp-ui-font-family,sans-serif);font-size:11px}"
    ".agn-root .agn-details .agn-args th{font-family:var(--jp-code-font-family,monospace);"
    "font-weight:600;white-space:nowrap}"
    ".agn-root .agn-details .agn-args td,.agn-root .agn-details .agn-attrs td{min-width:0;"
    "overflow-wrap:anywhere}"
    ".agn-root .agn-details .agn-d-raw>summary,.agn-root .agn-details .agn-d-events>summary"
    "{cursor:pointer;color:var(--jp-ui-font-color2,#616161);margin-top:6px}"
    ".agn-root .agn-details .agn-d-facts{color:var(--jp-ui-font-color2,#616161);"
    "font-size:11px}"
    ".agn-root .agn-details .agn-trace{white-space:pre-wrap;overflow-wrap:anywhere}"
    ".agn-root .agn-details .agn-trace-note{color:var(--jp-ui-font-color2,#757575);"
    "font-size:11px}"
    ".agn-root .agn-details .agn-msg>.agn-v,.agn-root .agn-details .agn-msg>.agn-v-fold>.agn-v,"
    ".agn-root .agn-details .agn-msg>.agn-v-fold>summary{font-family:var(--jp-content-font-family,"
    "sans-serif);font-size:13px}"
)
