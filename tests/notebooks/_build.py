"""Execute a notebook's cells in a real kernel and write it with its outputs (the
interactive view's widget state left out, so the file is stable and nbval-checkable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

#: The tag for a cell whose output nbval does not compare (timings, live views).
IGNORE = ["nbval-ignore-output"]


class Cells(list[Any]):
    """A notebook's cells, in order, added as Markdown or code."""

    def md(self, text: str) -> None:
        self.append(new_markdown_cell(text.strip()))

    def code(self, text: str, tags: list[str] | None = None) -> None:
        cell = new_code_cell(text.strip())
        if tags:
            cell.metadata["tags"] = list(tags)
        self.append(cell)


def execute_and_write(cells: list[Any], path: Path, *, timeout: int = 120) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    nbformat.write(nb, path)
    print(f"wrote {path}")
