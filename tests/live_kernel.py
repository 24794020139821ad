"""A live IPython kernel driven cell by cell, as a notebook frontend would (nbclient)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode


def new_client(path: Path) -> NotebookClient:
    """A client for a new empty notebook whose kernel runs in `path`."""
    return NotebookClient(
        nbformat.v4.new_notebook(),  # type: ignore[no-untyped-call]
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path)}},
    )


def stdout(cell: NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


class Kernel:
    """Run cells one by one in the client's started kernel."""

    def __init__(self, client: NotebookClient) -> None:
        self.client = client

    def run(self, source: str, *, fails: bool = False) -> NotebookNode:
        """Run `source` as a new cell; with `fails`, the cell must fail (and may)."""
        cell: NotebookNode = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]
        nb = self.client.nb
        nb.cells.append(cell)
        index = len(nb.cells) - 1
        if fails:
            with pytest.raises(CellExecutionError):
                self.client.execute_cell(cell, index)
        else:
            self.client.execute_cell(cell, index)
        return cell

    def value(self, expression: str) -> Any:
        """The value of `expression` in the kernel, through JSON."""
        cell = self.run(f"import json\nprint('VALUE ' + json.dumps({expression}))")
        return json.loads(stdout(cell).split("VALUE ", 1)[1])


K = TypeVar("K", bound=Kernel)


@contextmanager
def started(kind: type[K], path: Path, *setup: str) -> Iterator[K]:
    """A kernel in `path` with the extension loaded and the `setup` cells run."""
    client = new_client(path)
    with client.setup_kernel():
        live = kind(client)
        live.run("%load_ext agenta_notebook")
        for source in setup:
            live.run(source)
        yield live
