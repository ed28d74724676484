"""The README is a user's guide: short, its first Python block runs as is, its links resolve, and neither it nor the
guides under docs/ read as a work log."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The kernel study's page is rewritten with the study itself; it joins this check once it has been.
def _first_python_block(text: str) -> tuple[int, str]:
    """(line number of the opening fence, code) of the first ```python block."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "```python")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```")
    return start + 1, "\n".join(lines[start + 1:end])


def test_readme_is_short_and_its_first_python_block_runs_offline(tmp_path):
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    line, code = _first_python_block(text)
    assert line <= 80, f"the first Python block starts at line {line}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "QTVIT_CACHE": str(tmp_path / "cache"),
           # a download would fail at once: the block must need none
           "QTVIT_PRETRAINED_URL_BASE": "http://127.0.0.1:9/"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "torch.Size([2, 10])" and "'qtvit_1'" in out[1] and "'efficientvit_b1'" in out[2]
    assert not (tmp_path / "cache").exists()  # nothing was downloaded


def _guides() -> list[Path]:
    return [README] + sorted(p for p in (ROOT / "docs").rglob("*.md"))


def test_no_work_log_wording():
    bad = re.compile(r"\bissue\s+\d+|\bsession", re.IGNORECASE)
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}" for p in _guides()
             for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not found, found


def test_links_resolve_and_the_project_files_exist():
    for name in ("LICENSE", "CITATION.cff", "CHANGELOG.md"):
        assert (ROOT / name).is_file(), name
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    missing = []
    for page in _guides():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, missing
