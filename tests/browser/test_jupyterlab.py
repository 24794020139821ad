"""The trace widget in a real JupyterLab 4, driven in Debian's headless Chromium.

Starts JupyterLab on 127.0.0.1 (free port, random token, temp root dir) with a notebook
whose first cell traces a small agent run and shows it with `show_trace`, and whose
second cell shows a trace live while its spans end. Checks, in the browser: the root
row's subtotals, expanding rows, the details pane, escaping, live filling-in, no console
errors, and that no request leaves 127.0.0.1. With the file browser open, in windows of
900, 1,000 and 1,400 px: the root row's cost and tokens whole and under their heads, the
waterfall bars of an `asyncio.gather` overlapping; a model call's messages shown as a
conversation. Screenshots go to test-output/ (view-900.png, view-1000.png, view-1400.png,
view-details.png, jupyterlab-widget.png, jupyterlab-live.png).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_harness import CHROMIUM, OUTPUT, lab_server, offline_page, run_cell, wait_idle

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (./run test installs it)"
)

#: The traced code, shared by the notebook and by this test's own expectation.
AGENT = """
import asyncio
import agenta_notebook as an

#: OpenInference chat messages on the "plan" call: its details show a conversation.
MESSAGES = {
    "llm.input_messages.0.message.role": "system",
    "llm.input_messages.0.message.content": "You plan the steps of a trip.",
    "llm.input_messages.1.message.role": "user",
    "llm.input_messages.1.message.content": "Two days in Lisbon, please.",
    "llm.output_messages.0.message.role": "assistant",
    "llm.output_messages.0.message.content": "Day 1: Alfama. Day 2: Belem.",
}

async def fetch(index):
    with an.span(f"fetch {index}", type="tool"):
        await asyncio.sleep(0.3 + 0.05 * index)

async def fan_out():
    with an.span("fan out", type="chain"):
        await asyncio.gather(*(fetch(index) for index in range(4)))

def run_agent():
    with an.span("agent", type="agent"):
        with an.span("plan", type="llm", attributes=MESSAGES):
            an.record_usage(model="gpt-4o-mini", input_tokens=1200, output_tokens=300)
        with an.span("tools", type="chain"):
            with an.span("<img src=x onerror=alert(1)>", type="llm"):
                an.record_usage(model="my-local-llama", input_tokens=500, output_tokens=50)
            try:
                with an.span("search <script>alert(2)</script>", type="tool"):
                    raise ValueError("no results for <b>query</b>")
            except ValueError:
                pass
        with an.span("answer", type="llm"):
            an.record_usage(model="gpt-4o-mini", input_tokens=2000, output_tokens=400)
"""

FIRST_CELL = (
    AGENT
    + """
from agenta_notebook.views.display import show_trace
with an.trace("browser demo") as demo_trace:
    demo_display = show_trace(demo_trace)
    run_agent()
    await fan_out()
demo_display.finish()
"""
)

LIVE_CELL = """
import time
with an.trace("live run") as live_trace:
    live_display = show_trace(live_trace)
    for step in range(8):
        with an.span(f"live step {step}", type="tool"):
            time.sleep(0.6)
live_display.finish()
"""

#: The same, through the cell magic (the path users take), when the magic is there.
LIVE_MAGIC_CELL = """%%agenta_trace live_run
import time
for step in range(8):
    with an.span(f"live step {step}", type="tool"):
        time.sleep(0.6)
"""


def _has_magic() -> bool:
    try:
        from agenta_notebook.ipython import magic
    except ImportError:
        return False
    return hasattr(magic, "TraceMagics")


def _expected() -> dict[str, str]:
    """Figures the browser must show, computed by the core in this process."""
    from agenta_notebook.live import Trace
    from agenta_notebook.views.html import format_amount, format_money_in, format_tokens, view_scale

    scope: dict[str, Any] = {}
    exec(AGENT, scope)
    import asyncio

    import agenta_notebook as an

    with an.trace("browser demo") as trace:
        scope["run_agent"]()
        asyncio.run(scope["fan_out"]())
    assert isinstance(trace, Trace)
    figures: dict[str, str] = {}
    places = view_scale(trace.tree.root, trace.nodes).places
    for node in trace.nodes:
        subtotal = node.subtotal
        if subtotal.cost is None and subtotal.unpriced_calls:
            figures[node.name + " cost"] = "unpriced"
        else:
            figures[node.name + " cost"] = format_amount(subtotal.cost, places)
        figures[node.name + " unpriced"] = "+?" if subtotal.unpriced_calls else ""
        figures[node.name + " tokens"] = format_tokens(subtotal.total_tokens)
    totals = trace.tree.root.subtotal
    figures["header cost"] = format_money_in(totals.cost, totals.unpriced_calls, places)
    return figures


def _sources() -> list[str]:
    sources = (
        ("%load_ext agenta_notebook\n" + FIRST_CELL, LIVE_MAGIC_CELL)
        if _has_magic()
        else (FIRST_CELL, LIVE_CELL)
    )
    return [source.strip("\n") for source in sources]


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on 127.0.0.1; yields (base url, token) and always stops it."""
    with lab_server(tmp_path, "trace.ipynb", _sources(), "jupyterlab-server.log") as served:
        yield served


ROW_BUTTON = ".agn-names .widget-toggle-button"


def _row(page: Any, name: str) -> Any:
    """The row button that shows exactly `name` (after its indentation and ▸/▾ toggle,
    with its type)."""
    return page.locator(ROW_BUTTON).filter(
        has_text=re.compile(r"^[\s\u2003▸▾]*" + re.escape(name) + "( · |$)")
    )


def _cells(row: Any) -> Any:
    """The figure columns of a row: the line at the same place in the figures beside it,
    which must sit on the same line of the screen as the row's button."""
    index = row.evaluate("b => Array.from(b.parentElement.children).indexOf(b)")
    segment = row.locator("xpath=ancestor::div[contains(@class, 'agn-seg')][1]")
    line = segment.locator(".agn-figs .agn-line").nth(index)
    button_box, line_box = row.bounding_box(), line.bounding_box()
    assert button_box is not None and line_box is not None
    assert abs(button_box["y"] - line_box["y"]) <= 1.5, (button_box, line_box)
    return line


def _figures(row: Any) -> tuple[str, str]:
    """A row's cost (without its "+?" of unpriced calls) and tokens, as shown."""
    cells = _cells(row)
    cost = cells.locator(".agn-cost").first.inner_text()
    unpriced = cells.locator(".agn-cost .agn-unp").first.inner_text()
    return (
        cost.removesuffix(unpriced).strip(),
        cells.locator(".agn-tok").inner_text().strip(),
    )


#: Where an element sits against every box that clips it, up to the output area:
#: the boxes that cut it, and whether its own content overflows it.
CLIPPED = """(element) => {
  const own = element.getBoundingClientRect();
  const cut = [];
  if (element.scrollWidth > element.clientWidth + 1) cut.push('own content');
  let box = element.parentElement;
  while (box) {
    const style = getComputedStyle(box);
    const last = box.classList.contains('jp-OutputArea-output');
    if (last || style.overflowX !== 'visible') {
      const r = box.getBoundingClientRect();
      if (own.left < r.left - 0.5 || own.right > r.right + 0.5) cut.push(box.className);
    }
    if (last) break;
    box = box.parentElement;
  }
  return {cut, width: own.width, right: own.right};
}"""


def _fully_visible(element: Any) -> dict[str, Any]:
    found: dict[str, Any] = element.evaluate(CLIPPED)
    assert found["cut"] == [], found
    assert found["width"] > 0, found
    return found


def _check_view(page: Any, expected: dict[str, str], width: int) -> None:
    """At this window width: the root row's cost and tokens are whole and under their
    heads, the gather's bars overlap; a screenshot goes to test-output/."""
    page.set_viewport_size({"width": width, "height": 1800})
    cell = page.locator(".jp-Cell").first
    output = cell.locator(".jp-OutputArea-output").first
    root = _row(page, "browser demo")
    page.wait_for_timeout(500)  # the layout settles after the resize
    area = output.bounding_box()
    assert area is not None
    print(f"window {width} px: output area {area['width']:.0f} px wide")
    line = _cells(root)
    assert _figures(root) == (expected["browser demo cost"], expected["browser demo tokens"])
    cost, tokens = line.locator(".agn-cost").first, line.locator(".agn-tok").first
    for element in (cost, tokens, line.locator(".agn-dur").first):
        _fully_visible(element)
    # The column heads stay above their figures.
    heads = cell.locator(".agn-colhead").first
    for css in (".agn-cost", ".agn-tok"):
        head = heads.locator(css).first.bounding_box()
        figure = line.locator(css).first.bounding_box()
        assert head is not None and figure is not None
        assert abs(head["x"] + head["width"] - figure["x"] - figure["width"]) <= 1.5, css
    # The gather's four calls ran at the same time: their bars overlap.
    bars = []
    for index in range(4):
        bar = _cells(_row(page, f"fetch {index}")).locator(".agn-bar").bounding_box()
        assert bar is not None and bar["width"] >= 2, bar
        bars.append((bar["x"], bar["x"] + bar["width"]))
    for first in range(4):
        for second in range(first + 1, 4):
            (a_left, a_right), (b_left, b_right) = bars[first], bars[second]
            assert a_left < b_right and b_left < a_right, (first, second, bars)
    OUTPUT.mkdir(exist_ok=True)
    output.screenshot(path=str(OUTPUT / f"view-{width}.png"))


def test_widget_in_jupyterlab(jupyterlab: tuple[str, str]) -> None:
    base, token = jupyterlab
    expected = _expected()
    with offline_page(1400, 1800, "jupyterlab-failure.png") as opened:
        _drive(opened.page, base, token, expected)
    opened.check()


def _drive(page: Any, base: str, token: str, expected: dict[str, str]) -> None:
    """Open the notebook, run both cells and check what the widget shows."""
    page.goto(f"{base}/lab/tree/trace.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    wait_idle(page, 120_000)

    # Run the first cell.
    run_cell(page, 0)
    root = _row(page, "browser demo")
    page.locator(".jp-Cell").first.locator(".jp-OutputArea-output").first.wait_for()
    wait_idle(page)
    root.wait_for(timeout=15_000)

    # The root row and the header show the core's subtotals.
    assert _figures(root) == (
        expected["browser demo cost"],
        expected["browser demo tokens"],
    )
    assert expected["browser demo unpriced"] == "+?"
    header = page.locator(".agn-header").first.inner_text()
    assert expected["header cost"] in header
    costliest = page.locator(".jp-Cell").first.locator(".agn-costliest")
    assert "costliest spans" in costliest.inner_text()

    # Any width: with the file browser open in a 900 px window, and at 1,400 px.
    if not page.locator("#filebrowser").is_visible():
        page.locator(".jp-SideBar [data-id='filebrowser']").first.click()
    page.locator("#filebrowser").wait_for()
    _check_view(page, expected, 900)  # an output area under 560 px: figures still whole
    _check_view(page, expected, 1000)  # an output area of about 560 px
    _check_view(page, expected, 1400)

    # The controls are behind "⚙ options": collapse everything, then expand level by level
    # (clicking a row opens its details and expands it).
    output = page.locator(".jp-Cell").first.locator(".agn-root")
    assert output.locator(".agn-controls").count() == 0
    output.get_by_role("button", name="⚙ options").click()
    output.get_by_role("button", name="collapse all").click()
    page.wait_for_function(
        "() => document.querySelectorAll("
        "'.jp-Cell:first-child .agn-names .widget-toggle-button').length === 1"
    )
    root.click()
    agent = _row(page, "agent")
    agent.wait_for()
    assert _figures(agent) == (expected["agent cost"], expected["agent tokens"])
    assert _row(page, "plan").count() == 0
    agent.click()
    for name in ("plan", "tools", "answer"):
        row = _row(page, name)
        row.wait_for()
        assert _figures(row) == (expected[name + " cost"], expected[name + " tokens"])
    tools = _row(page, "tools")
    tools.click()
    payload = _row(page, "<img src=x onerror=alert(1)>")
    payload.wait_for()
    error_row = _row(page, "search <script>alert(2)</script>")
    error_row.wait_for()
    assert "error" in _cells(error_row).locator(".agn-marks").inner_text()
    assert "unpriced" in _cells(payload).locator(".agn-marks").inner_text()

    # Clicking a row opens its details; span strings show as text.
    # (Expanding "tools" above opened its details: wait for the clicked row's.)
    error_row.click()
    details = page.locator(".agn-details").first
    details.wait_for()
    page.wait_for_function(
        "() => document.querySelector('.agn-details').innerText.includes('search <script>')"
    )
    assert page.locator(".agn-details").count() == 1
    text = details.inner_text()
    assert "ValueError" in text and "no results for <b>query</b>" in text
    assert "attributes" in text and "subtotal" in text
    payload.click()
    page.wait_for_function(
        "() => document.querySelector('.agn-details')"
        " && document.querySelector('.agn-details').innerText.includes('no price known')"
        " && document.querySelector('.agn-details').innerText.includes('my-local-llama')"
    )
    assert page.locator("img[src='x']").count() == 0
    assert page.locator(".jp-OutputArea script").count() == 0

    # A model call's messages show as a conversation.
    _row(page, "plan").click()
    page.locator(".agn-details .agn-conversation .agn-msg").first.wait_for()
    roles = page.locator(".agn-details .agn-conversation .agn-msg")
    assert roles.count() >= 3
    assert "Two days in Lisbon" in page.locator(".agn-details .agn-conversation").inner_text()
    page.locator(".jp-Cell").first.screenshot(path=str(OUTPUT / "view-details.png"))

    OUTPUT.mkdir(exist_ok=True)
    page.locator(".jp-Cell").first.screenshot(path=str(OUTPUT / "jupyterlab-widget.png"))

    # The second cell fills in while it runs, then settles.
    run_cell(page, 1)
    live = page.locator(".jp-Cell").nth(1)
    live.locator(ROW_BUTTON, has_text="live step 2").wait_for(timeout=30_000)
    still_running = page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count()
    assert still_running == 1, "the live view should fill in before the cell ends"
    wait_idle(page)
    live.locator(ROW_BUTTON, has_text="live step 7").wait_for(timeout=10_000)
    page.wait_for_function(
        "() => !document.querySelectorAll('.jp-Cell')[1].innerText.includes('running')"
    )
    live.screenshot(path=str(OUTPUT / "jupyterlab-live.png"))
