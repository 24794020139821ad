"""The experiment loop's views in a real JupyterLab 4, in Debian's headless Chromium.

One notebook, run cell by cell: two traced cells of a 3-step chain against the built-in
OpenAI stand-in (`agenta_notebook.demo`) with different models, `%agenta_compare` of the
two (and of three runs), and a traced loop with a `--budget` that it crosses. Checks, in
the page: the comparison widget shows the aligned rows (each beside its line of figures), the deltas
(the cheaper model: a cost that went down) and collapses on a click; the budgeted cell
fails with `BudgetExceeded` and its trace's header shows the budget line (used of the
budget, where it was reached, the refused call). No request leaves 127.0.0.1, no console
error. Screenshots: test-output/compare-widget.png, test-output/compare-spread.png (three
runs), test-output/compare-narrow.png (a 900 px window, scrolled to the right),
test-output/budget-header.png.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_harness import (
    CHROMIUM,
    OUTPUT,
    click_row,
    lab_server,
    offline_page,
    run_cell,
    wait_idle,
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (./run test installs it)"
)

#: A budget worth a few calls of the loop below (one call costs about $0.00003) and far
#: less than all thirty of them.
BUDGET = "0.0001"

CELLS = (
    """%load_ext agenta_notebook
import os, openai
import agenta_notebook as an
from agenta_notebook import demo
an.instrument_openai()
server = demo.start()
os.environ["OPENAI_API_KEY"] = "sk-dummy-for-the-stand-in"
client = openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)

def chain(model):
    for step in ("retrieve", "generate", "grade"):
        with an.span(step, type="chain"):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"{step} a sailing boat"}])""",
    '%%agenta_trace "big model" -o a\nchain("gpt-4o")',
    '%%agenta_trace "small model" -o b\nchain("gpt-4o-mini")',
    "%agenta_compare a b",
    "%agenta_compare a b a",
    f"""%%agenta_trace "runaway loop" --budget {BUDGET}
for _ in range(30):
    client.chat.completions.create(model="gpt-4o-mini", messages=[
        {{"role": "user", "content": "What limits the speed of a sailing boat?"}}])""",
)
COMPARE_CELL = 3
SPREAD_CELL = 4
BUDGET_CELL = 5


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """JupyterLab on 127.0.0.1 serving experiments.ipynb; yields (base url, token) and
    always stops it."""
    with lab_server(tmp_path, "experiments.ipynb", CELLS, "experiments-server.log") as served:
        yield served


def _run(page: Any, index: int) -> Any:
    """Run cell `index`, wait until the kernel is idle again and return the cell."""
    return run_cell(page, index, until_done=True)


NAMES = ".agn-cmp-names .widget-toggle-button"


def _line_of(button: Any) -> Any:
    """The line of figures beside a row button: at its index, on the same screen line."""
    index = button.evaluate("b => Array.from(b.parentElement.children).indexOf(b)")
    line = (
        button.locator("xpath=ancestor::div[contains(@class, 'agn-cmp-seg')][1]")
        .locator(".agn-cmp-figs .agn-line")
        .nth(index)
    )
    button_box, line_box = button.bounding_box(), line.bounding_box()
    assert button_box is not None and line_box is not None
    assert abs(button_box["y"] - line_box["y"]) <= 1.5, (button_box, line_box)
    return line


#: Whether every figure of a comparison shows whole: inside the view, its text not cut.
WHOLE = """(root) => {
  const box = root.getBoundingClientRect();
  return Array.from(root.querySelectorAll('.agn-c')).filter(cell => {
    const own = cell.getBoundingClientRect();
    return own.right > box.right + 0.5 || cell.scrollWidth > cell.clientWidth + 1;
  }).map(cell => cell.className + ': ' + cell.innerText);
}"""


def _fits(root: Any) -> None:
    cut = root.evaluate(WHOLE)
    assert cut == [], f"figures of the comparison are cut: {cut}"


def _check_comparison(page: Any) -> None:
    cell = _run(page, COMPARE_CELL)
    root = cell.locator(".agn-cmp-root")
    root.wait_for(timeout=30_000)
    buttons = cell.locator(NAMES)
    texts = [text.strip("\u2003 ") for text in buttons.all_inner_texts()]
    # One tree: the root, each step, and each step's model call (named after its model in
    # run A; the calls of both runs aligned on one row each).
    assert texts[0] == "▾ big model", texts
    steps = [text for text in texts if text.endswith(("retrieve", "generate", "grade"))]
    assert steps == ["▾ retrieve", "▾ generate", "▾ grade"], texts
    assert len(texts) == 7, texts
    heads = cell.locator(".agn-cmp-glabel").all_inner_texts()
    assert heads == ["big model", "small model", "delta"]
    # The root's line: a cost per run, and a delta that went down (a cheaper model).
    line = _line_of(buttons.first)
    costs = line.locator(".agn-cmp-cost").all_inner_texts()
    assert len(costs) == 3 and all(cost.startswith("$") for cost in costs[:2]), costs
    assert costs[2].startswith("-$"), costs
    assert "an-cmp-down" in (line.locator(".agn-cmp-cost").nth(2).get_attribute("class") or "")
    calls = line.locator(".agn-cmp-calls").all_inner_texts()
    assert calls == ["3", "3", "0"], calls
    # The biggest changes are highlighted, somewhere below the root.
    assert cell.locator(".agn-cmp-figs .an-cmp-top").count() >= 3
    # Each row sits beside its own line of figures, and every column shows whole.
    for position in range(buttons.count()):
        _line_of(buttons.nth(position))
    _fits(root)
    OUTPUT.mkdir(exist_ok=True)
    cell.screenshot(path=str(OUTPUT / "compare-widget.png"))
    # A click on a row collapses it, another expands it again.
    rows = "(root) => root.querySelectorAll('.agn-cmp-names .widget-toggle-button').length === {}"
    click_row(page, root, buttons.nth(1), rows.format(6))
    assert "▸ retrieve" in cell.locator(NAMES).nth(1).inner_text()
    click_row(page, root, cell.locator(NAMES).nth(1), rows.format(7))


def _check_spread(page: Any) -> None:
    """Three runs: min / median / max groups and how many runs have each span."""
    cell = _run(page, SPREAD_CELL)
    cell.locator(".agn-cmp-root").wait_for(timeout=30_000)
    assert cell.locator(".agn-cmp-glabel").all_inner_texts() == ["min", "median", "max"]
    buttons = cell.locator(NAMES)
    assert buttons.count() == 7
    line = _line_of(buttons.first)
    assert line.locator(".agn-cmp-runs").inner_text() == "3"
    costs = line.locator(".agn-cmp-cost").all_inner_texts()
    assert costs[0] != costs[2] and costs[1] == costs[2], costs  # a, b, a: the median is a's
    assert line.locator(".agn-cmp-calls").all_inner_texts() == ["3", "3", "3"]
    root = cell.locator(".agn-cmp-root")
    _fits(root)
    OUTPUT.mkdir(exist_ok=True)
    cell.screenshot(path=str(OUTPUT / "compare-spread.png"))
    # In a narrow window the view scrolls sideways: the last columns can be reached.
    page.set_viewport_size({"width": 900, "height": 1600})
    page.wait_for_function(
        "(root) => root.scrollWidth > root.clientWidth + 50", arg=root.element_handle()
    )
    root.evaluate("(root) => { root.scrollLeft = root.scrollWidth; }")
    last = line.locator(".agn-cmp-calls").last
    page.wait_for_function(
        "([root, cell]) => cell.getBoundingClientRect().right"
        " <= root.getBoundingClientRect().right + 0.5",
        arg=[root.element_handle(), last.element_handle()],
    )
    cell.screenshot(path=str(OUTPUT / "compare-narrow.png"))
    page.set_viewport_size({"width": 1500, "height": 1600})


def _check_budget(page: Any) -> None:
    cell = _run(page, BUDGET_CELL)
    error = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    error.first.wait_for(timeout=30_000)
    assert "BudgetExceeded" in error.first.inner_text()
    budget = cell.locator(".agn-root .agn-budget").first
    budget.wait_for(timeout=30_000)
    page.wait_for_function(
        "(cell) => { const line = cell.querySelector('.agn-root .agn-budget');"
        " return line && line.innerText.includes('refused'); }",
        arg=cell.element_handle(),
    )
    text = budget.inner_text()
    assert re.search(r"budget \$[0-9.]+ of \$" + re.escape(BUDGET) + r" \(\d+%\)", text), text
    assert re.search(r"reached at \S", text), text
    assert "refused:" in text and "gpt-4o-mini" in text, text
    view = cell.locator(".jp-OutputArea-output").filter(has=page.locator(".agn-root")).first
    view.scroll_into_view_if_needed()
    OUTPUT.mkdir(exist_ok=True)
    view.screenshot(path=str(OUTPUT / "budget-header.png"))


def test_compare_and_budget_views_in_jupyterlab(lab: tuple[str, str]) -> None:
    base, token = lab
    with offline_page(1500, 1600, "experiments-failure.png") as opened:
        page = opened.page
        page.goto(f"{base}/lab/tree/experiments.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        wait_idle(page, 120_000)
        for index in range(COMPARE_CELL):
            _run(page, index)
        _check_comparison(page)
        _check_spread(page)
        _check_budget(page)
    opened.check()
