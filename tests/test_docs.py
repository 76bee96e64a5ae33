"""The user documentation stays true to the repository: links resolve, every CLI subcommand and option and every
YAML key is documented, the README stays short and shows the command CI runs.

Documents checked: ``README.md``, ``docs/*.md`` and ``benchmarks/README.md`` (links); the user guide
(``README.md`` and ``docs/*.md``) for commands and keys. Reads the markdown as text: no network, no qlib.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from qlib_hist import cli
from qlib_hist.settings import HISTSettings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_INDEX = RESULTS / "README.md"
LINKED = [README, *DOCS, ROOT / "benchmarks" / "README.md", RESULTS_INDEX]  # every relative link and anchor resolves
GUIDE = [README, *DOCS]  # commands and YAML keys are documented here
README_MAX_LINES = 260

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercase, punctuation dropped except ``-`` and ``_``,
    spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """Every anchor ``path``'s headings define (a repeated heading gets ``-1``, ``-2``... as on GitHub)."""
    seen: Dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, target) of every markdown link and image outside code."""
    for number, line in prose_lines(path):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def broken_links(path: Path) -> List[str]:
    """What is wrong with ``path``'s relative links: a missing file, a missing anchor, or a target outside the
    repository."""
    problems = []
    for number, target in links(path):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        dest = (path.parent / file_part).resolve() if file_part else path
        if ROOT.resolve() not in (dest, *dest.parents):
            problems.append(f"{where}: points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def guide_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in GUIDE)


def subcommands(parser: argparse.ArgumentParser, prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[str, ...]]:
    """Every leaf command of the parser, as its words: ``("concepts", "from-sw")``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = (*prefix, name)
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                if nested:
                    yield from subcommands(sub, words)
                else:
                    yield words


def leaf_parser(words: Tuple[str, ...]) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


# ---------------------------------------------------------------------------------------------------------- tests
def test_the_documents_exist() -> None:
    names = {path.name for path in DOCS}
    assert {"concepts.md", "rolling.md", "explain.md", "experiments.md", "design.md", "troubleshooting.md"} <= names


@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", GUIDE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_guide_names_no_path_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text and "/work/" not in text, f"{path.name} names a development path"


def test_every_cli_subcommand_is_documented() -> None:
    commands = list(subcommands(cli.build_parser()))
    assert ("demo",) in commands and ("concepts", "from-sw") in commands  # the walk found the parser's commands
    text = guide_text()
    missing = [" ".join(words) for words in commands if "qlib-hist " + " ".join(words) not in text]
    assert not missing, f"CLI subcommands not in README.md or docs/: {missing}"


def test_every_cli_option_is_documented() -> None:
    text = guide_text()
    missing = []
    for words in subcommands(cli.build_parser()):
        for action in leaf_parser(words)._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and not re.search(re.escape(option) + r"\b", text):
                    missing.append(f"qlib-hist {' '.join(words)} {option}")
    assert not missing, f"CLI options not in README.md or docs/: {missing}"


def test_every_yaml_key_is_documented() -> None:
    names = HISTSettings.field_names()
    assert "d_feat" in names and "stock2concept" in names
    text = guide_text()
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, f"HIST settings without a `name` entry in README.md or docs/: {missing}"


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}: move detail to docs/"


def test_readme_shows_the_command_ci_runs() -> None:
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next(line for line in run if line.startswith("python3 -m venv"))
    assert command in README.read_text(encoding="utf-8").splitlines(), ".ci/run and the README's command differ"


def test_every_results_page_is_in_the_index_with_a_status() -> None:
    """benchmarks/results/README.md lists every page of the folder (archive/ included) once, each as current or
    superseded; a superseded page lives under archive/."""
    pages = {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*.md") if p != RESULTS_INDEX}
    assert "final.md" in pages and "gpu/ablation.md" in pages  # the walk found the pages
    rows = [line for line in RESULTS_INDEX.read_text(encoding="utf-8").splitlines() if line.startswith("| [")]
    indexed: Dict[str, str] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        page = re.match(r"\[[^\]]+\]\(([^)]+)\)", cells[0]).group(1)  # type: ignore[union-attr]
        assert page not in indexed, f"{page} is indexed twice"
        status = cells[-1]
        assert status.startswith(("current", "superseded")), f"{page}: status {status!r}"
        assert status.startswith("superseded") == page.startswith("archive/"), f"{page}: {status!r}"
        assert cells[2], f"{page}: no command that remakes it"
        indexed[page] = status
    assert not pages - set(indexed), f"results pages missing from {RESULTS_INDEX.name}: {sorted(pages - set(indexed))}"


#: an issue number in a user-facing page ("issue 28", "issue-28", "#28"): the research narrative lives in
#: benchmarks/results/, the user's pages say what holds; qlib's own issues ("qlib issue #1545") may be cited
_ISSUE_NUMBER = re.compile(r"(?:qlib )?\bissues?[ -]#?\d+|(?<![\w&])#\d+\b", re.IGNORECASE)


@pytest.mark.parametrize("name", ["README.md", *(f"docs/{p.name}" for p in DOCS), "CHANGELOG.md"])
def test_user_pages_name_no_issue_numbers(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    found = sorted({m for m in _ISSUE_NUMBER.findall(text) if not m.lower().startswith("qlib ")})
    assert not found, f"{name} names issues {found}: say what holds, and keep the history in benchmarks/results/"


def test_slugs_follow_github() -> None:
    assert slug("What differs from qlib's HIST") == "what-differs-from-qlibs-hist"
    assert slug("Grids on Ray: one machine or many") == "grids-on-ray-one-machine-or-many"
    assert slug("Rolling retraining (`rolling.py`)") == "rolling-retraining-rollingpy"
    assert slug("Real data: CSI300 2014–2022") == "real-data-csi300-20142022"
    assert slug("snake_case and [a link](x.md)") == "snake_case-and-a-link"
