"""The shipped systemd units: valid for systemd, and saying what a stop does to the models."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "conf" / "systemd"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing: install Debian's systemd package (.ci/run does)",
)
@pytest.mark.parametrize("unit", ["llmux.service", "llmux-model@.service"])
def test_systemd_accepts_the_unit_without_a_warning(tmp_path, unit):
    text = (UNITS / unit).read_text().replace("/opt/llmux/bin/llmux", "/bin/true")
    name = unit.replace("@.", "@qwen.")  # a template is checked as an instance
    (tmp_path / name).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr


def test_the_unit_the_recipes_and_the_readme_agree_on_what_a_stop_kills():
    unit = (UNITS / "llmux.service").read_text()
    mode = re.search(r"^KillMode=(\w+)", unit, re.M).group(1)
    readme = (ROOT / "README.md").read_text()
    assert mode == "mixed" and "`KillMode=mixed`" in readme
    # the one recipe that starts a backend directly offers a way out of the cgroup
    wake = (ROOT / "conf" / "hooks" / "llama-cpp" / "wake.sh").read_text()
    assert "systemd-run --scope" in wake and "LLAMA_SCOPE=1" in readme
    # the model units stop their whole cgroup, wrappers and children alike
    model_unit = (UNITS / "llmux-model@.service").read_text()
    assert re.search(r"^KillMode=control-group", model_unit, re.M)
