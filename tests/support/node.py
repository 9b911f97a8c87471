"""The official openai package for Node, as a real client in tests."""

import json
import os
import shutil
import subprocess


def install_node_client(directory, script) -> None:
    """The official openai package for Node in ``directory``, and ``script`` as client.mjs."""
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node and npm are needed for this test"
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "openai@6"],
        cwd=directory,
        check=True,
        timeout=300,
        capture_output=True,
    )
    shutil.copy(script, os.path.join(directory, "client.mjs"))


def run_node_client(directory, timeout: float, **env) -> dict:
    """Run client.mjs with ``env`` added; the JSON object its last line prints."""
    out = subprocess.run(
        ["node", "client.mjs"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **env),
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
