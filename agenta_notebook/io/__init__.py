"""Where a trace goes: a pandas DataFrame (`frame`), an OTLP JSON file and back
(`persist`), an OTLP backend (`otlp`)."""
