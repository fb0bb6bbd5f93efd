"""Issue 30, docs that drift: what the README and docs point to is in the repository (a user who clones
it has nothing outside it), and the report's images stay inside a 1400-px window."""

from __future__ import annotations

import re
from pathlib import Path

from selfplay.report import STYLE

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "checkpoints" / "base" / "README.md"]
PACKAGES = ("docs", "configs", "selfplay", "strokes", "rollout", "judges", "trainer", "benchmarks", "tests", "checkpoints")
# a file named by its path from the repository root: lower-case words and a known extension (placeholders
# such as configs/ablations/TABLE.yaml or runs/<name>/ are not files)
FILE = re.compile(r"(?<![\w/.])((?:\.\./)*(?:%s)/[a-z0-9_./-]*\.(?:py|md|yaml|json|jsonl|html|png))(?![\w.])"
                  % "|".join(PACKAGES))


def test_the_docs_point_only_to_files_in_the_repository():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        assert "../" not in text, f"{doc.relative_to(ROOT)} points outside the repository"
        missing += [f"{doc.relative_to(ROOT)}: {m}" for m in FILE.findall(text) if not (ROOT / m).exists()]
    assert not missing, missing


def test_the_readme_points_to_the_design_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "`docs/design.md`" in readme and "DESIGN.md" not in readme


def test_the_reports_images_scale_to_its_page_and_the_page_fits_1400_px():
    body = re.search(r"body\{[^}]*max-width:(\d+)px", STYLE)
    assert body and int(body.group(1)) <= 1400 - 2 * 16  # the page and the browser's margins
    assert re.search(r"img\{[^}]*max-width:100%", STYLE)  # a wide plot shrinks to the page, never past it
