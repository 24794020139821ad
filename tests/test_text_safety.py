"""Every text output survives any Python string, and stays small (issue 12).

Lone surrogates (which UTF-8 cannot encode, so a message carrying one fails to send),
terminal control sequences and bidi overrides from a span (its name, type, model,
attributes, status) or a loaded file are escaped in `text/plain`, the static HTML and the
widget's labels, tooltips and HTML; a 20 MB name is cut in every one of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordFactory
from live_kernel import Kernel, new_client

from agenta_notebook.core.rollup import SpanRecord
from agenta_notebook.live import Trace
from agenta_notebook.views.details import details_html
from agenta_notebook.views.display import static_bundle
from agenta_notebook.views.html import MAX_TEXT, safe_text, text_summary
from agenta_notebook.views.widget import TraceView

HOSTILE = {
    "lone surrogate": "a\ud800b",
    "surrogate pair as code points": "\ud83d\ude00",
    "clear screen and bell": "\x1b[2J\x1b]0;pwned\x07",
    "bidi override": "abc\u202edef\u2066",
    "nul, DEL and C1": "\x00\x7f\x85\x9b",
}
#: What no output may carry raw (newline and tab are allowed in multi-line HTML only).
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def hostile_trace(records: RecordFactory, text: str) -> Trace:
    root = records.add(f"root {text}", type=f"workflow{text}")
    records.add(
        text,
        root,
        type=f"llm{text}",
        status="ERROR",
        **{
            "gen_ai.request.model": f"model{text}",
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 1,
            f"key{text}": f"value{text}",
            "gen_ai.usage.cost": f"bad{text}",  # a warning quoting the bad value
        },
    )
    return Trace(records.trace_id, f"trace {text}", root_span_id=root.span_id, records=records.all)


def assert_safe(text: str, where: str) -> None:
    text.encode("utf-8")  # a lone surrogate raises here, as when the message is sent
    assert not UNSAFE.search(text), (where, UNSAFE.findall(text))


def widget_texts(view: TraceView) -> dict[str, str]:
    """Every text the widget sends: labels, tooltips, HTML values, dropdown labels."""
    texts: dict[str, str] = {"header": view.header.value}
    for number, (_row, label, line) in enumerate(view.visible):
        texts[f"label {number}"] = label
        texts[f"figures {number}"] = line
    for number, segment in enumerate(view._segments):
        texts[f"tooltips {number}"] = "\n".join(segment.names.tooltips)
    view.click(view.visible[1][0].node.span_id)  # the details pane of the hostile span
    texts["details"] = view.details.value
    texts["types"] = "\n".join(view.type_control._options_labels)
    return texts


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_text_plain_and_html_escape_every_unsafe_character(
    records: RecordFactory, text: str
) -> None:
    trace = hostile_trace(records, text)
    bundle = static_bundle(trace)
    for mime, value in bundle.items():
        assert_safe(value, mime)
    json.dumps(bundle, ensure_ascii=False).encode("utf-8")
    assert bundle["text/plain"].startswith("Trace 'trace ")
    node = trace.tree.nodes[1]
    assert_safe(details_html(node), "details")
    assert "warning" in bundle["text/plain"]  # the bad cost is a warning: shown safely
    # the escapes say what was there
    assert safe_text(text).encode("ascii", "backslashreplace")


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_widget_labels_tooltips_and_html_escape_every_unsafe_character(
    records: RecordFactory, text: str
) -> None:
    view = TraceView(hostile_trace(records, text))
    try:
        for where, value in widget_texts(view).items():
            assert_safe(value, where)
        for widget in view._created.values():  # every trait the front end receives
            json.dumps(widget.get_state(), ensure_ascii=False, default=str).encode("utf-8")
    finally:
        view.close()


def test_safe_text_escapes_and_bounds() -> None:
    assert safe_text("\x1b[2J\x07") == "\\x1b[2J\\x07"
    assert safe_text("\u202eabc") == "\\u202eabc"
    assert safe_text("\ud800") == "\\ud800"
    assert safe_text("line\nnext") == "line\\x0anext"
    assert safe_text("line\nnext", one_line=False) == "line\nnext"
    assert safe_text("é中😀 plain") == "é中😀 plain"
    assert len(safe_text("\x07" * 10_000, 50)) == 50


def test_a_20_mb_model_name_is_cut_in_every_output() -> None:
    huge = "m" * 20_000_000
    records = [
        SpanRecord(1, 1, None, "root", 0, 100),
        *(
            SpanRecord(
                1,
                2 + n,
                1,
                f"{huge[:2_000_000]} {n}",
                1,
                2,
                attributes={
                    "gen_ai.request.model": f"{huge}{n}",
                    "gen_ai.usage.input_tokens": 1,
                    "gen_ai.usage.output_tokens": 1,
                },
            )
            for n in range(12)
        ),
    ]
    trace = Trace(1, huge, root_span_id=1, records=records)
    bundle = static_bundle(trace)
    assert len(bundle["text/plain"]) <= MAX_TEXT
    assert len(bundle["text/html"]) < 1_000_000
    assert "more models" in text_summary(trace)
    view = TraceView(trace)
    try:
        for where, value in widget_texts(view).items():
            assert len(value) < 1_000_000, where
    finally:
        view.close()


HOSTILE_CELL = r"""
import json, pathlib
import agenta_notebook as an
from agenta_notebook.views.display import show_trace
from agenta_notebook.views.widget import live_widget_count
bad = "x\ud800 \x1b[2J\x07 \u202eevil"
with an.trace("cell " + bad) as t:
    with an.span(bad, type="llm" + bad):
        an.record_usage(model="model" + bad, input_tokens=3, output_tokens=1)
shown = show_trace(t)
shown.finish()
display(t)
t.save("hostile.json")
loaded = an.load("hostile.json")
display(loaded)
loaded
"""


def test_hostile_names_display_in_a_real_kernel(tmp_path: Path) -> None:
    client = new_client(tmp_path)
    with client.setup_kernel():
        kernel = Kernel(client)
        kernel.run("%load_ext agenta_notebook")
        cell = kernel.run(HOSTILE_CELL)
        traced = kernel.run(
            "%%agenta_trace\nwith an.span('y\\ud800\\x1b[2J'):\n"
            "    an.record_usage(model='m\\u202e', input_tokens=1, output_tokens=1)\n"
        )
    outputs: list[Any] = [*cell.outputs, *traced.outputs]
    assert not [o for o in outputs if o.output_type in ("error", "stream")], outputs
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert len(shown) == 5
    for output in shown:
        json.dumps(output["data"], ensure_ascii=False).encode("utf-8")
        assert_safe(output["data"]["text/plain"], "text/plain")
        assert_safe(output["data"]["text/html"], "text/html")
        assert "\\ud800" in output["data"]["text/plain"] or "\\u202e" in output["data"]["text/html"]
