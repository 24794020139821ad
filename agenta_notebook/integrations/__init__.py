"""Integrations with model clients: one module per client library."""

from __future__ import annotations

from .openai import instrument_openai, maybe_instrument_on_load, uninstrument_openai

__all__ = ["instrument_openai", "maybe_instrument_on_load", "uninstrument_openai"]
