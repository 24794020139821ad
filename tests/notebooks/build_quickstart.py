"""Build notebooks/quickstart.ipynb: write its cells, run it in a real kernel, save it.

    .venv/bin/python tests/notebooks/build_quickstart.py

Run it again after changing a cell or what a cell prints; `tests/test_magic.py` then
checks the saved outputs with nbval. Traced cells (whose live view shows timings) are
tagged `nbval-ignore-output`; the cells after them print the figures, which nbval
compares. Stored outputs keep the view's static text/html and text/plain twins, not
the widget reference or state (a saved notebook has no kernel behind its widgets).
"""

from __future__ import annotations

from pathlib import Path

from _build import IGNORE, Cells, execute_and_write

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
cells = Cells()
md = cells.md
code = cells.code


md("""
# agenta-notebook: a quick tour

Mark a cell with `%%agenta_trace` and everything it runs is recorded as one trace: a tree
of spans, with **cost, tokens, latency and errors subtotalled at every node**, shown live
below the cell. Nothing to add up by hand, nothing to return from your functions.

This tour runs offline, with no API key: the "model calls" below are stand-ins that
report deterministic token counts, as a real client instrumentation would
(see `openai.ipynb` for the real `openai` client).
""")
code("%load_ext agenta_notebook")
md("""
## A stand-in model

A model call is a span of type `llm` that records its usage with `record_usage`. Prices
come from the offline price table, so the cost of each call is computed for you.
""")
code('''
import asyncio
from concurrent.futures import ThreadPoolExecutor

import agenta_notebook as an
from agenta_notebook import record_usage, span


@span(type="llm")
def chat(prompt: str, model: str = "gpt-4o-mini") -> str:
    """Pretend to call a model: a fixed answer and token counts derived from the prompt."""
    record_usage(model=model, input_tokens=40 + 2 * len(prompt), output_tokens=25)
    return f"answer to: {prompt[:40]}"


def show_tree(trace: an.Trace) -> None:
    """Print every node with its subtotal: what the live view shows, as plain text."""
    for node in trace.nodes:
        figures = node.subtotal
        cost = "-" if figures.cost is None else f"${figures.cost:.6f}"
        error = "  ERROR" if node.is_error_origin else ""
        print(
            f"{'  ' * node.depth}{node.name} [{node.type}]  "
            f"tokens={figures.total_tokens}  calls={figures.model_calls}  cost={cost}{error}"
        )
''')
md("""
## 1. A nested workflow

The cell runs inside a root span named after the magic's argument. `-o rag` keeps the
`Trace` in a variable (`an.last_trace()` also returns the last one).
""")
code(
    """
%%agenta_trace rag -o rag
@span(type="retriever")
def retrieve(question: str) -> list[str]:
    return [f"document {i} about {question}" for i in range(3)]


@span(type="workflow")
def answer(question: str) -> str:
    documents = retrieve(question)
    return chat(f"Answer '{question}' from: {' | '.join(documents)}")


answer("what is a span?");
""",
    IGNORE,
)
md("The same figures as plain text (every node carries the subtotal of its subtree):")
code("show_tree(rag)")
code("""
summary = rag.summary()
print(f"trace {summary.trace_id}: {summary.spans} spans in {summary.duration_ms:.1f} ms")
""")
md("""
## 2. An agent with tools and several model calls

Two models are used; the trace's totals and the per-model breakdown are computed for you.
""")
code(
    """
%%agenta_trace "weather agent" -o agent_trace
@span(type="tool")
def weather(city: str) -> dict[str, float]:
    return {"celsius": {"Paris": 21.0, "Oslo": 9.0}.get(city, 15.0)}


@span(type="tool")
def to_fahrenheit(celsius: float) -> float:
    return celsius * 9 / 5 + 32


@span(type="agent")
def agent(task: str) -> str:
    plan = chat(f"Plan the steps for: {task}")
    reading = weather("Paris")
    fahrenheit = to_fahrenheit(reading["celsius"])
    draft = chat(f"Draft an answer. Plan: {plan}. Paris is {fahrenheit} F.")
    return chat(f"Check and polish: {draft}", model="gpt-4o")


reply = agent("Is it warm in Paris, in Fahrenheit?")
""",
    IGNORE,
)
code("""
show_tree(agent_trace)
totals = agent_trace.totals
print(f"\\n{totals.model_calls} model calls, {totals.input_tokens} input + "
      f"{totals.output_tokens} output tokens, ${totals.cost:.6f}")
for model in agent_trace.summary().by_model:
    print(f"  {model.model}: {model.calls} call(s), {model.total_tokens} tokens, ${model.cost:.6f}")
""")
md("""
## 3. An async fan-out

Top-level `await` works in a traced cell. Tasks started by `asyncio.gather` (and work sent
to threads) land under the span that started them.
""")
code(
    """
%%agenta_trace fan-out
@span(type="llm")
async def summarize(document: str) -> str:
    await asyncio.sleep(0.01)
    record_usage(model="gpt-4o-mini", input_tokens=100 + len(document), output_tokens=30)
    return document.upper()


@span(type="tool")
def count_words(text: str) -> int:
    return len(text.split())


documents = [f"report number {i} on quarterly sales" for i in range(5)]
with span("summaries", type="chain"):
    summaries = await asyncio.gather(*(summarize(d) for d in documents))
with span("word counts", type="chain"), ThreadPoolExecutor(2) as pool:
    counts = list(pool.map(count_words, summaries))
counts
""",
    IGNORE,
)
code("show_tree(an.last_trace())")
md("""
## 4. An error

The cell fails exactly as it would without the magic (one traceback, Run All stops), and
the trace is still recorded, with the span where the error started marked. The error
counts once, however many frames it went through.
""")
code(
    """
%%agenta_trace flaky
@span(type="tool")
def search(query: str) -> list[str]:
    raise TimeoutError("the search backend did not answer")


@span(type="agent")
def researcher(query: str) -> list[str]:
    chat(f"Plan a search for: {query}")
    return search(query)


researcher("latest results")
""",
    [*IGNORE, "raises-exception"],
)
code("""
flaky = an.last_trace()
show_tree(flaky)
print("errors:", flaky.totals.errors, "| root status:", flaky.root.record.status_message)
""")
md("""
## 5. The trace as a DataFrame

One row per span: own figures and subtotals, nullable columns (an unknown price is
missing, not zero).
""")
code("""
frame = agent_trace.to_dataframe()
frame[["name", "type", "depth", "model", "input_tokens", "output_tokens", "cost",
       "subtotal_total_tokens", "subtotal_cost"]]
""")
code("""
print(f"sum of the own costs: ${frame['cost'].sum():.6f}")
print(f"root subtotal:        ${frame['subtotal_cost'].iloc[0]:.6f}")
""")
md("""
## 6. A real OpenAI client

`instrument_openai()` records every call made with the `openai` client, priced, with no
`record_usage`. `demo.client()` talks to a stand-in for the OpenAI API that this package
runs on 127.0.0.1 (deterministic answers, realistic usage), unless `OPENAI_API_KEY` is
set: then the same cell calls OpenAI.
""")
code("""
from agenta_notebook import demo

an.instrument_openai()
client = demo.client()
""")
code(
    """
%%agenta_trace openai -o openai_trace
@span(type="agent")
def ask(question: str) -> str:
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
    )
    return reply.choices[0].message.content


ask("What is a trace?");
""",
    IGNORE,
)
code("""
show_tree(openai_trace)
""")
md("""
## More

- `%%agenta_trace --quiet` records without showing anything; `%%agenta_trace --save
  trace.json` writes the trace as OTLP JSON once all its spans have ended.
- `%%agenta_trace?` lists the options.
- Load the extension in every session with `c.InteractiveShellApp.extensions =
  ["agenta_notebook"]` in your IPython configuration.
""")


def main() -> None:
    execute_and_write(cells, NOTEBOOK, timeout=120)


if __name__ == "__main__":
    main()
