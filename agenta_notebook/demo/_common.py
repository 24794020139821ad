"""What both protocols of the stand-in share: the tokenizer, the answer text, ids, faults."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

#: The `created` timestamp of every answer: a fixed value keeps answers reproducible.
CREATED: Final = 1_750_000_000
DEMO_API_KEY: Final = "agenta-notebook-demo"
DEFAULT_SLOW_SECONDS: Final = 3.0
REASONING_MODEL: Final = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)", re.IGNORECASE)
ERROR_MODEL: Final = re.compile(r"^error-(\d{3})$")
SLOW_MODEL: Final = re.compile(r"^slow(?:-(\d+(?:\.\d+)?))?$")
_TOKEN: Final = re.compile(r"\w+|[^\w\s]")

_OPENINGS: Final = (
    "Here is a short answer about {topic}.",
    "Thinking about {topic}, three points stand out.",
    "In brief, {topic} comes down to a few facts.",
    "A careful look at {topic} gives a clear picture.",
)
_BODIES: Final = (
    "First, start from what is known. Second, check it against a source. "
    "Third, keep the answer short.",
    "The main idea is simple, the details matter, and the trade-offs are real.",
    "Most of the work is in the framing; the rest follows from it.",
    "It depends on the context, but the usual answer holds in most cases.",
)


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: words and punctuation marks.

    >>> count_tokens("Hello, world!")
    4
    """
    return len(_TOKEN.findall(text))


def text_of(content: Any) -> str:
    """The text of a message content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def reply_text(model: str, question: str, prompt: str) -> str:
    """The answer to `question` (the last message) given the whole `prompt`: deterministic."""
    words = re.findall(r"[A-Za-z0-9']+", question)
    topic = " ".join(words[-6:]).lower() if words else "your question"
    digest = hashlib.sha256(f"{model}\n{prompt}".encode()).digest()
    opening = _OPENINGS[digest[0] % len(_OPENINGS)].format(topic=topic)
    return f"{opening} {_BODIES[digest[1] % len(_BODIES)]}"


def reasoning_tokens(model: str, visible_tokens: int) -> int:
    """Hidden reasoning tokens of an answer of `visible_tokens`: only for reasoning models."""
    if not REASONING_MODEL.match(model):
        return 0
    return 64 + 2 * visible_tokens


def limit(text: str, max_tokens: Any) -> tuple[str, bool]:
    """Cut `text` to `max_tokens` tokens; (text, whether it was cut)."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        return text, False
    matches = list(_TOKEN.finditer(text))
    if len(matches) <= max_tokens:
        return text, False
    return text[: matches[max_tokens - 1].end()], True


def pieces(text: str) -> list[str]:
    """Stream deltas: two or three words each, joined back they give `text`."""
    words = re.findall(r"\S+\s*", text)
    return ["".join(words[index : index + 3]) for index in range(0, len(words), 3)] or [""]


def new_id(prefix: str) -> str:
    """A response id unique to one call (answers are deterministic, their ids are not), so
    two identical calls are told apart, as with the real providers."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the server sends for one request: a JSON body, or server-sent events.

    `events` yields (event name or None, data); `done` ends an event stream with
    `data: [DONE]` (OpenAI's chat completions do, the Responses and Anthropic APIs do not).
    """

    status: int = 200
    body: Any = None
    events: Iterable[tuple[str | None, Any]] | None = None
    done: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
