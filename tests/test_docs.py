"""The documentation holds together: every relative link and #anchor in every Markdown file
resolves, the README stays a short front door, and nothing in the repository points outside it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300
SKIPPED_DIRS = {".git", "build", "out", "artifacts", "node_modules", ".pytest_cache", "__pycache__"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".cfg", ".toml", ".txt", ".yml", ".yaml", ".json", ".csv", ".svg"}
TEXT_NAMES = {"Makefile", "run", ".gitignore"}
# Spelled in pieces so that this file does not match itself.
OUTSIDE = [re.compile(p) for p in (r"\.\./" + "shared", r"(?<![\w.])/" + r"work/")]

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _repository_files(root: Path) -> list[Path]:
    """Tracked files (git), else every file outside virtualenvs and build folders."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True,
                             check=True, text=True).stdout.strip()
        if Path(top).resolve() == root.resolve():
            listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
            names = [n for n in listed.stdout.decode().split("\0") if n]
            return [root / n for n in names if (root / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    return [p for p in root.rglob("*") if p.is_file() and not _skipped(p.relative_to(root))]


def _skipped(relative: Path) -> bool:
    return any(part in SKIPPED_DIRS or part.startswith(".venv") or part.endswith(".egg-info")
               for part in relative.parts)


def markdown_files(root: Path) -> list[Path]:
    return sorted(p for p in _repository_files(root)
                  if p.suffix == ".md" and not _skipped(p.relative_to(root)))


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker[0] * len(marker)
            elif marker.startswith(fence):
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|__|\*|~~)", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline and reference link outside code."""
    found = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        prose = CODE_SPAN.sub("", line)
        found += [(number, target) for target in INLINE_LINK.findall(prose)]
        definition = REFERENCE_DEF.match(prose)
        if definition:
            found.append((number, definition.group(1)))
    return found


def broken_links(path: Path, root: Path) -> list[str]:
    """One line per link of `path` that does not resolve inside `root`."""
    problems = []
    for number, target in links(path):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        where = f"{path.relative_to(root)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        if file_part.startswith("/"):
            problems.append(f"{where} (absolute path: link relative to the file)")
            continue
        resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{where} (points outside the repository)")
        elif not resolved.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where} (no heading #{anchor} in {resolved.name})")
    return problems


def outside_references(root: Path) -> list[str]:
    problems = []
    for path in _repository_files(root):
        if _skipped(path.relative_to(root)):
            continue
        if path.suffix not in TEXT_SUFFIXES and path.name not in TEXT_NAMES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if any(pattern.search(line) for pattern in OUTSIDE):
                problems.append(f"{path.relative_to(root)}:{number}: {line.strip()[:120]}")
    return problems


# --- the repository ---------------------------------------------------------------------------


def test_markdown_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files(ROOT)}
    assert {"README.md", "docs/index.md", "docs/algorithm.md", "models/README.md"} <= names


def test_every_relative_link_resolves():
    problems = [p for path in markdown_files(ROOT) for p in broken_links(path, ROOT)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail into docs/")


def test_readme_links_every_docs_page():
    targets = {t.partition("#")[0] for _, t in links(ROOT / "README.md")}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= targets, f"docs pages the README does not link: {sorted(pages - targets)}"


def test_docs_index_links_every_page():
    targets = {t.partition("#")[0] for _, t in links(ROOT / "docs" / "index.md")}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages <= targets, f"docs pages docs/index.md does not link: {sorted(pages - targets)}"


def test_nothing_points_outside_the_repository():
    problems = outside_references(ROOT)
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


# --- the checker itself, on tiny trees -----------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_good_links_pass(tmp_path):
    root = _tree(tmp_path, {
        "README.md": "# Top\n\n[a](docs/a.md#the-plan-json-onnxmbsplan1) [self](#top) "
                     "[img](docs/p.svg) [web](https://example.com) `[code](missing.md)`\n"
                     "```\n[fenced](missing.md)\n```\n",
        "docs/a.md": "# A\n\n## The plan JSON (`onnxmbs.plan/1`)\n\n[back](../README.md#top)\n",
        "docs/p.svg": "<svg/>",
    })
    assert [p for f in markdown_files(root) for p in broken_links(f, root)] == []


@pytest.mark.parametrize("link, reason", [
    ("docs/missing.md", "no such file"),
    ("docs/a.md#no-such-heading", "no heading #no-such-heading"),
    ("#nowhere", "no heading #nowhere"),
    ("../outside.md", "points outside the repository"),
    ("/abs/a.md", "absolute path"),
])
def test_a_broken_link_fails(tmp_path, link, reason):
    root = _tree(tmp_path / "repo", {"README.md": f"# Top\n\nsee [it]({link})\n", "docs/a.md": "# A\n"})
    (tmp_path / "outside.md").write_text("# Outside\n", encoding="utf-8")
    problems = broken_links(root / "README.md", root)
    assert len(problems) == 1 and reason in problems[0] and "README.md:3" in problems[0]


def test_slugs_follow_github():
    assert github_slug("6. Algorithm 1: effective flops, redundancy and β") == \
        "6-algorithm-1-effective-flops-redundancy-and-β"
    assert github_slug("The plan JSON (`onnxmbs.plan/1`)") == "the-plan-json-onnxmbsplan1"
    assert github_slug("Quick start: `make demo` and `make test`") == "quick-start-make-demo-and-make-test"


def test_repeated_headings_get_numbered_anchors(tmp_path):
    page = _tree(tmp_path, {"a.md": "# Notes\n\n## Notes\n\n```\n# not a heading\n```\n"}) / "a.md"
    assert anchors(page) == {"notes", "notes-1"}


def test_outside_references_are_found(tmp_path):
    root = _tree(tmp_path, {"ok.py": "x = 'tests/data'\n",
                            "bad.md": "see ../" + "shared/notes\n",
                            "tool.sh": "cd /" + "work/main\n"})
    problems = outside_references(root)
    assert sorted(p.split(":")[0] for p in problems) == ["bad.md", "tool.sh"]


def test_the_op_guide_lists_every_stage_kind():
    """docs/adding-an-op.md's table names exactly the kinds each stage maps (its tables are the one place)."""
    from onnxmbs.compact.index import INDEX_KINDS
    from onnxmbs.compact.surgery import SURGERY_KINDS
    from onnxmbs.graph.channels import CHANNEL_KINDS

    rows = {line.split("|")[1].strip(" `"): line.split("|")[3] for line in
            (ROOT / "docs" / "adding-an-op.md").read_text().splitlines() if line.startswith("| `")}
    for field, kinds in (("channels", CHANNEL_KINDS), ("surgery", SURGERY_KINDS), ("index", INDEX_KINDS)):
        listed = set(re.findall(r"[a-z_]+", rows[field].split("(")[0]))
        assert listed == set(kinds), field
