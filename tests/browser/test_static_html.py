"""The static `text/html` twin rendered by headless Chromium: inert, nested, capped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lab_harness import CHROMIUM, CHROMIUM_ARGS, OUTPUT

from agenta_notebook.core.rollup import SpanEvent, SpanRecord
from agenta_notebook.live import Trace
from agenta_notebook.views.html import format_amount, format_tokens, static_html, view_scale

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (./run test installs it)"
)


def _trace() -> Trace:
    llm = {"ag.type.node": "llm", "gen_ai.request.model": "gpt-4o-mini"}
    error = SpanEvent("exception", 5, {"exception.message": "<img src=y onerror=alert(5)>"})
    records = [
        SpanRecord(1, 1, None, "agent <script>alert(1)</script>", 0, 9_000_000),
        SpanRecord(
            1, 2, 1, "plan", 1, 2_000_000, attributes={**llm, "gen_ai.usage.input_tokens": 900}
        ),
        SpanRecord(1, 3, 1, "tools", 2_000_001, 8_000_000, attributes={"ag.type.node": "chain"}),
        SpanRecord(
            1,
            4,
            3,
            "<img src=x onerror=alert(2)>",
            2_000_002,
            3_000_000,
            status="ERROR",
            status_message="<b onmouseover=alert(3)>boom</b>",
            events=(error,),
            attributes={"ag.type.node": "tool"},
        ),
        SpanRecord(
            1,
            5,
            3,
            "local",
            3_000_001,
            7_000_000,
            attributes={**llm, "gen_ai.request.model": "my-llama", "gen_ai.usage.input_tokens": 50},
        ),
    ]
    return Trace(1, "static", root_span_id=1, records=records)


def test_static_html_in_chromium() -> None:
    from playwright.sync_api import sync_playwright

    trace = _trace()
    markup = static_html(trace)
    dialogs: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 500})

            def on_dialog(dialog: Any) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.on("request", lambda request: requests.append(request.url))
            page.set_content(f"<html><body>{markup}</body></html>")
            page.wait_for_timeout(300)  # give any injected handler a chance to fire
            for summary in page.locator("summary").all():
                summary.hover()
            assert page.locator("script, img, iframe").count() == 0
            text = page.locator("body").inner_text()
            places = view_scale(trace.tree.root, trace.nodes).places
            for node in trace.nodes:
                assert node.name in text
                subtotal = node.subtotal
                cost = (
                    "unpriced"
                    if subtotal.cost is None and subtotal.unpriced_calls
                    else format_amount(subtotal.cost, places)
                )
                assert cost in text and format_tokens(subtotal.total_tokens) in text
            # A waterfall bar per span, drawn where the span ran: "plan" then "tools".
            assert page.locator(".agn-bar").count() == len(trace.nodes)
            plan = page.locator(".agn-bar").nth(1).bounding_box()
            tools = page.locator(".agn-bar").nth(2).bounding_box()
            assert plan is not None and tools is not None
            assert plan["x"] + plan["width"] <= tools["x"] + 1 and plan["width"] > 5
            # nested: the tools row holds its two children
            tools_row = page.locator("details", has=page.locator("summary", has_text="tools")).last
            assert "local" in tools_row.inner_text()
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "static-html.png"), full_page=True)
        finally:
            browser.close()
    assert dialogs == []
    assert [url for url in requests if not url.startswith(("about:", "data:"))] == []
