"""The repository stands on its own: no file cites notes or data that live outside it (a folder
beside the checkout, or the founding design notes), which users of a clone don't have. Facts are
stated where they are used or in docs/; the public traces ship in bench/traces/data."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A path out of the repository into a sibling "shared" folder, or the design notes kept there.
OUTSIDE = re.compile(r"\.\./shared|/work/shared|\bshared/(traces|gpu)\b|\b(design|gpu)\.md\b")
EXEMPT = ("bench/traces/data/",)  # third-party data, cited as it came


def _files() -> list[str]:
    """Tracked and not-ignored untracked files (so a new file is checked before its commit)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [f for f in out.splitlines() if (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the sources
        dirs = ("orchestrator", "simsglang", "cumem_shim", "bench", "tests", "docs", "placements")
        return [
            str(p.relative_to(ROOT))
            for d in dirs
            for p in (ROOT / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ] + ["README.md", "Makefile", "pyproject.toml"]


def test_no_file_cites_anything_outside_the_repository() -> None:
    me = str(Path(__file__).resolve().relative_to(ROOT))
    files = [f for f in _files() if f != me and not f.startswith(EXEMPT)]
    assert len(files) > 100 and "README.md" in files  # the listing itself worked
    hits = []
    for f in files:
        try:
            text = (ROOT / f).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and archives
        hits += [f"{f}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "state the fact or point at docs/ instead:\n" + "\n".join(hits)


def test_the_pattern_catches_each_kind_of_citation() -> None:
    for cited in (
        "see ../shared/gpu.md",
        "(design.md §3)",
        "gpu.md's wake_probe",
        "bash ../shared/gpu/prepare_wheels.sh",
        "/work/shared/design.md",
    ):
        assert OUTSIDE.search(cited), cited
    for fine in ("docs/gpu-testing.md", "shared memory", "a shared queue", "shared-prefix blocks"):
        assert not OUTSIDE.search(fine), fine
