"""Copy benchmark result tables (written by the benchmark scripts) into README.md between markers.

    python benchmarks/update_readme.py benchmarks/results/fidelity_minilm.md [more.md ...]

Everything between ``<!-- BENCHMARK-RESULTS -->`` and ``<!-- /BENCHMARK-RESULTS -->`` is replaced by
the given Markdown files (each followed by its plot, if a PNG of the same stem exists), so the README
only ever shows numbers that a script in this repository produced.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- BENCHMARK-RESULTS -->", "<!-- /BENCHMARK-RESULTS -->"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    parts = []
    for name in argv:
        md = Path(name).resolve()
        text = md.read_text(encoding="utf-8").strip()
        text = text.replace("\n# ", "\n### ").removeprefix("# ")
        parts.append("### " + text if not text.startswith("###") else text)
        png = md.with_suffix(".png")
        if png.exists():
            parts.append(f"![{md.stem}]({png.relative_to(ROOT).as_posix()})")
    readme = ROOT / "README.md"
    content = readme.read_text(encoding="utf-8")
    if START not in content:
        print(f"error: README.md has no {START} marker", file=sys.stderr)
        return 1
    head, rest = content.split(START, 1)
    tail = rest.split(END, 1)[1] if END in rest else rest
    readme.write_text(head + START + "\n" + "\n\n".join(parts) + "\n" + END + tail, encoding="utf-8")
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
