"""The repository refers to nothing outside it: the README's and the docs' links resolve to
files of the checkout, no file points at the design documents the project started from
(``../shared/``; the design is docs/design.md, the published facts docs/published.md), and
none holds the checkout's own absolute path (a recorded command line, a generated file)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# [text](target) in Markdown; a target with a scheme (https:, mailto:) or only an anchor is
# not a file
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:|^#")
OUTSIDE = re.compile(r"\.\./shared|\b(DESIGN|PUBLISHED)\.md\b")


def _tracked() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    return [ROOT / name.decode() for name in listed if name]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None  # a binary (a picture) or a file deleted but not yet committed


def test_markdown_links_resolve_inside_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if EXTERNAL.match(target):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_no_file_refers_outside_the_repository():
    checkout = str(ROOT)
    found = []
    for path in _tracked():
        if path == Path(__file__).resolve():
            continue  # its own patterns and examples
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line) or checkout in line:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not found, found


def test_the_check_sees_what_it_refuses(tmp_path):
    """The patterns match the references they are for (else the tests above check nothing)."""
    assert OUTSIDE.search("the contract is ../shared/DESIGN.md")
    assert OUTSIDE.search("see PUBLISHED.md §4.6") and not OUTSIDE.search("docs/published.md")
    assert LINK.findall("[the map](docs/howto/map.md#top)") == ["docs/howto/map.md#top"]
    assert EXTERNAL.match("https://github.com/carbonplan/ocr") and EXTERNAL.match("#anchor")
