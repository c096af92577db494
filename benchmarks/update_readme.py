"""Copy benchmark result tables (written by the benchmark scripts) into README.md between markers.

    python benchmarks/update_readme.py benchmarks/results/fidelity_minilm.md [more.md ...]
    python benchmarks/update_readme.py benchmarks/results/downstream_minilm.md

Each Markdown file goes into the README block of its benchmark (each followed by its plot, if a PNG of
the same stem exists), so the README only ever shows numbers that a script in this repository produced:

* ``downstream_*.md`` (``benchmarks/downstream_benchmark.py``) between ``<!-- DOWNSTREAM-RESULTS -->``
  and ``<!-- /DOWNSTREAM-RESULTS -->``;
* every other file (the fidelity benchmark) between ``<!-- BENCHMARK-RESULTS -->`` and
  ``<!-- /BENCHMARK-RESULTS -->``.

Only the blocks that receive at least one file are replaced, so updating one benchmark leaves the other's
tables as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- BENCHMARK-RESULTS -->", "<!-- /BENCHMARK-RESULTS -->"
DOWNSTREAM_START, DOWNSTREAM_END = "<!-- DOWNSTREAM-RESULTS -->", "<!-- /DOWNSTREAM-RESULTS -->"


def render(md: Path, level: str = "###") -> list[str]:
    """The README parts for one results file: its text (top heading at ``level``) and its plot."""
    text = md.read_text(encoding="utf-8").strip()
    text = text.replace("\n# ", f"\n{level} ").removeprefix("# ")
    parts = [f"{level} " + text if not text.startswith(level) else text]
    png = md.with_suffix(".png")
    if png.exists():
        parts.append(f"![{md.stem}]({png.relative_to(ROOT).as_posix()})")
    return parts


def replace_block(content: str, start: str, end: str, parts: list[str]) -> str:
    """``content`` with everything between ``start`` and ``end`` replaced by ``parts``."""
    if start not in content:
        raise ValueError(f"README.md has no {start} marker")
    head, rest = content.split(start, 1)
    tail = rest.split(end, 1)[1] if end in rest else rest
    return head + start + "\n" + "\n\n".join(parts) + "\n" + end + tail


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    fidelity: list[str] = []
    downstream: list[str] = []
    for name in argv:
        md = Path(name).resolve()
        if md.stem.startswith("downstream"):
            downstream += render(md, "####")
        else:
            fidelity += render(md)
    readme = ROOT / "README.md"
    content = readme.read_text(encoding="utf-8")
    try:
        if fidelity:
            content = replace_block(content, START, END, fidelity)
        if downstream:
            content = replace_block(content, DOWNSTREAM_START, DOWNSTREAM_END, downstream)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    readme.write_text(content, encoding="utf-8")
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
