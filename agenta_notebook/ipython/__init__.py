"""The IPython integration: `%%agenta_trace` and the hooks that run it (`magic`)."""
