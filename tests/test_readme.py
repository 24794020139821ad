"""The README's tour runs: its python snippets, in order, as cells of a real kernel."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_snippets() -> list[str]:
    return [
        block.strip("\n")
        for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    ]


def test_readme_has_exactly_two_setup_commands() -> None:
    setup = README.read_text().split("## Set up", 1)[1].split("##", 1)[0]
    block = re.search(r"```bash\n(.*?)```", setup, re.DOTALL)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert [line.split("#")[0].strip() for line in commands] == ["./run demo", "./run test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./run test" in ci


def test_readme_snippets_run_in_a_kernel(tmp_path: Path) -> None:
    snippets = readme_snippets()
    assert any(s.startswith("%%agenta_trace") for s in snippets)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(s) for s in snippets]
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "import json\n"
            "print(json.dumps({'tokens': run.totals.total_tokens,"
            " 'calls': run.totals.model_calls, 'names': [n.name for n in run.nodes],"
            " 'openai_calls': call.totals.model_calls,"
            " 'anthropic_calls': claude_call.totals.model_calls,"
            " 'anthropic_tokens': claude_call.totals.total_tokens,"
            " 'anthropic_usage': message.usage.input_tokens + message.usage.output_tokens}))"
        )
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    }
    environment["PYTHONPATH"] = str(README.parent)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=environment)
    last = notebook.cells[-1].outputs[-1]["text"]
    summary = json.loads(last)
    # 3 llm calls of 1,200 + 80 tokens under the traced cell, counted once each.
    assert summary["tokens"] == 3 * 1280
    assert summary["calls"] == 3
    assert summary["names"][0] == "answer a question"
    assert summary["openai_calls"] == 1
    # The Anthropic SDK's own span, read from the global provider (no cache tokens here).
    assert summary["anthropic_calls"] == 1
    assert summary["anthropic_tokens"] == summary["anthropic_usage"]
    assert (tmp_path / "answer.otlp.json").exists()


def test_demo_command_opens_the_quickstart_in_jupyterlab(tmp_path: Path) -> None:
    """The README's first command, as written: installs (into this venv) and serves Lab
    with the quickstart open. `--no-browser` and the port/token are passed through."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "readme-demo-test"
    environment = dict(os.environ, VENV=sys.prefix)
    environment.pop("OPENAI_API_KEY", None)
    log = (tmp_path / "demo.log").open("wb")
    process = subprocess.Popen(
        [
            str(README.parent / "run"),
            "demo",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
        ],
        cwd=README.parent,
        env=environment,
        stdout=log,  # a file, not a pipe: pip's output must never block the command
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        contents = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"{base}/api/contents/quickstart.ipynb?token={token}", timeout=5
                ) as response:
                    contents = json.loads(response.read())
                break
            except OSError:
                time.sleep(1)
        if contents is None:
            lines = (tmp_path / "demo.log").read_text(errors="replace").splitlines()
            shown = "\n".join(line for line in lines if "is ignored" not in line)[-4000:]
            raise AssertionError(f"JupyterLab did not come up (exit {process.poll()}):\n{shown}")
        assert contents["type"] == "notebook"
        assert any(
            "%%agenta_trace" in "".join(cell["source"]) for cell in contents["content"]["cells"]
        )
        # Given a notebook, jupyter-server serves its folder (notebooks/) and Lab opens it.
        with urllib.request.urlopen(
            f"{base}/lab/tree/quickstart.ipynb?token={token}", timeout=10
        ) as response:
            assert response.status == 200
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
