"""Build notebooks/frameworks.ipynb: write its cells, run it in a real kernel, save it.

    .venv/bin/python tests/notebooks/build_frameworks.py

Run it again after changing a cell or what a cell prints; `tests/test_frameworks.py` then
checks the saved outputs with nbval (ids and times through tests/nbval_sanitize.cfg).
The traced cell (whose live view shows timings) is tagged `nbval-ignore-output`; the
cells after it print the figures, which nbval compares. Everything runs against the
stand-ins on 127.0.0.1, so the figures are the same on every run.
"""

from __future__ import annotations

from pathlib import Path

from _build import IGNORE, Cells, execute_and_write

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "frameworks.ipynb"
cells = Cells()
md = cells.md
code = cells.code


md("""
# LangChain, LiteLLM and Anthropic in one trace

Real applications stack libraries: a LangChain chain calls the `openai` client, LiteLLM
routes to it too, and the Anthropic SDK records its own calls. Instrument all of them and
each model call may be recorded twice, by two layers. `agenta_notebook` counts every call
**once**, at the layer closest to the HTTP request, and marks the other record as such.

This notebook runs offline, against the stand-ins for the OpenAI and Anthropic APIs that
`agenta_notebook.demo` serves on 127.0.0.1 (deterministic answers, realistic usage).
Install the frameworks with `pip install 'agenta-notebook[all]' langchain-openai`.
""")
code("""
import os

# LiteLLM downloads its model price map when it is imported, unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

%load_ext agenta_notebook
""")
md("""
## One call to trace the whole stack

`an.instrument()` puts OpenInference's instrumentor on every supported client library that
is installed (OpenAI, LiteLLM, LangChain, Google GenAI), and says what it did: the
Anthropic SDK traces itself, so it is left alone. Calling it again changes nothing.
""")
code("""
import warnings

import litellm
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

import agenta_notebook as an
from agenta_notebook import demo

# OpenInference's LangChain instrumentor still calls a method LangChain deprecated.
warnings.filterwarnings("ignore", message=r"Calling \\.text\\(\\) as a method is deprecated")

outcomes = an.instrument()
""")
code("""
{name: outcome.status for name, outcome in outcomes.items()}
""")
code("""
_ = an.instrument()  # a second call: nothing is instrumented twice
""")
md("""
## The stand-ins

One local server speaks both APIs: `base_url` for OpenAI clients (LangChain's `ChatOpenAI`,
LiteLLM's `api_base`), `demo.anthropic_client()` for Anthropic's.
""")
code("""
server = demo.start()
chat = ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="stand-in", max_retries=0)
chain = (
    ChatPromptTemplate.from_messages(
        [("system", "You are a concise science tutor."), ("user", "Explain {topic} in one line.")]
    )
    | chat
    | StrOutputParser()
)
claude = demo.anthropic_client(server)
""")
md("""
## Three libraries, one traced cell

Three LangChain calls (each recorded by LangChain's instrumentor *and* the OpenAI client's),
two LiteLLM calls (LiteLLM's span over the OpenAI client's), two Anthropic calls (the SDK's
own spans; the second reads the prompt cache the first one wrote).
""")
code(
    """
%%agenta_trace "three frameworks" -o stack
answers = [chain.invoke({"topic": topic}) for topic in ("tides", "rainbows", "magnets")]

for city in ("Lisbon", "Oslo"):
    litellm.completion(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": f"One travel tip for {city}?"}],
        api_base=server.base_url,
        api_key="stand-in",
    )

guide = [
    {
        "type": "text",
        "text": "You are a museum guide. " + "Answer in the voice of a friendly expert. " * 30,
        "cache_control": {"type": "ephemeral"},
    }
]
for question in ("Who painted the Night Watch?", "When was the Louvre founded?"):
    claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=200,
        system=guide,
        messages=[{"role": "user", "content": question}],
    )
""",
    IGNORE,
)
md("""
What the tree shows, as text: every span with its role in the roll-up. A model call
recorded twice keeps its span (you can still read its inputs and outputs) but adds nothing.
""")
code("""
def show(trace: an.Trace) -> None:
    for node in trace.nodes:
        own = node.own
        figures = f"  tokens={own.total_tokens}" if own.total_tokens is not None else ""
        cost = f"  ${own.cost:.6f}" if own.cost is not None else ""
        role = f"  [{node.role}]" if node.role != "none" else ""
        print(f"{'  ' * node.depth}{node.name}{role}{figures}{cost}")


show(stack)
""")
code("""
totals = stack.totals
print(f"{totals.model_calls} model calls, {totals.input_tokens} input tokens "
      f"({totals.cache_read_tokens} read from a cache, {totals.cache_write_tokens} written), "
      f"{totals.output_tokens} output tokens, ${totals.cost:.6f}")
for model in stack.summary().by_model:
    print(f"  {model.model}: {model.calls} call(s), {model.total_tokens} tokens, ${model.cost:.6f}")
""")
md("""
Each LangChain call is counted once, at the OpenAI client's span; the LangChain span of the
same call says by whom it was recorded twice:
""")
code("""
twins = [node for node in stack.nodes if node.role == "recorded twice"]
print(len(twins), "spans recorded twice")
print(twins[0].warnings[0])
""")
md("""
`an.uninstrument()` undoes what `an.instrument()` did, and only that.
""")
code("""
an.uninstrument()
""")


def main() -> None:
    execute_and_write(cells, NOTEBOOK, timeout=180)


if __name__ == "__main__":
    main()
