"""Helpers for code that runs in the Agenta side venv (.venv-agenta), in a kernel or a script.

`summary(trace)` is a JSON-ready description of one of our traces: every node with its
parent, whether it is detached, its own and subtotal figures, and the spans' raw
attributes that matter to the Agenta rows, so the test in the main venv can check them.
"""

from __future__ import annotations

from typing import Any


def _figures(figures: Any) -> dict[str, Any]:
    return {
        "input_tokens": figures.input_tokens,
        "output_tokens": figures.output_tokens,
        "total_tokens": figures.total_tokens,
        "cache_read_tokens": figures.cache_read_tokens,
        "cache_write_tokens": figures.cache_write_tokens,
        "cost": None if figures.cost is None else str(figures.cost),
        "model_calls": figures.model_calls,
        "unpriced_calls": figures.unpriced_calls,
        "errors": figures.errors,
    }


def _attributes(attributes: Any) -> dict[str, Any]:
    keep = ("ag.type", "ag.metrics", "gen_ai.", "llm.token_count", "llm.model_name", "ag.meta")
    return {
        key: value if isinstance(value, str | int | float | bool) or value is None else str(value)
        for key, value in attributes.items()
        if key.startswith(keep) and not key.startswith("ag.meta.configuration.messages")
    }


def summary(trace: Any) -> dict[str, Any]:
    """Our trace, as plain data."""
    nodes = []
    for node in trace.nodes:
        twin = getattr(node, "duplicate_of", None)
        nodes.append(
            {
                "name": node.name,
                "span_id": f"{node.record.span_id:016x}",
                "parent_id": (
                    None
                    if node.record.parent_span_id is None
                    else f"{node.record.parent_span_id:016x}"
                ),
                "parent": node.parent.name if node.parent is not None else None,
                "detached": node.detached,
                "running": node.running,
                "type": node.type,
                "scope": node.record.scope,
                "own": _figures(node.own),
                "subtotal": _figures(node.subtotal),
                "mismatch": node.mismatch,
                "warnings": list(node.warnings),
                "recorded_twice_with": None if twin is None else twin.name,
                "attributes": _attributes(node.record.attributes),
            }
        )
    return {
        "name": trace.name,
        "trace_id": f"{trace.trace_id:032x}",
        "running": trace.running,
        "totals": _figures(trace.totals),
        "nodes": nodes,
    }
