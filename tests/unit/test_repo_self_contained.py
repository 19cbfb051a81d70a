"""The repository explains itself: no file cites a document that lives outside it, and every citation of
the repository's own documents points at something that exists.

- No file (tracked, or new and not ignored) names the private notes the code was first written from:
  their facts are in docs/protocol.md (IKE-ME) and docs/nat-lab.md (the lab), and comments cite those
  or the RFC / draft sections directly (CONTRIBUTING.md, "Comments").
- Every path under docs/ that a file mentions exists.
- Every section cited as `docs/protocol.md §N` / `docs/nat-lab.md §N.M` is a numbered heading there.
- Every "design principle N" is one of the numbered principles in CONTRIBUTING.md.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
# the changelog may tell that such citations were replaced; this file has to spell the patterns
EXEMPT = {"CHANGELOG.md", SELF}

OUTSIDE = re.compile("|".join([
    r"reference\s*§", r"\bref\.\s*§", r"reference doc\b", r"netlab", r"weakness(es)? #", r"\.\./shared", r"/work/shared",
    r"shared/reference", r"seed-systems", r"ike-me-protocol", r"ice-and-nat\.md", r"ikev2-essentials",
    r"medsrv-portal-and-schema", r"\bdesign\.md",
]), re.IGNORECASE)
DOC_PATH = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)")
SECTION_CITE = re.compile(r"docs/(protocol|nat-lab)\.md`{0,2}((?:(?:\s*[,/-]\s*|\s+and\s+|\s+)?§\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)
PRINCIPLE_CITE = re.compile(r"design principles? (\d+)", re.IGNORECASE)


@cache
def repo_files() -> tuple[str, ...]:
    """Tracked files plus new ones git does not ignore (so a fresh file is checked before its commit)."""
    res = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True)
    return tuple(sorted({p for p in res.stdout.decode().split("\0") if p and (ROOT / p).is_file()}))


def texts() -> list[tuple[str, str]]:
    out = []
    for rel in repo_files():
        try:
            out.append((rel, (ROOT / rel).read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary (images)
    return out


def hits(pattern: re.Pattern[str], skip: set[str]) -> list[str]:
    found = []
    for rel, text in texts():
        if rel in skip:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{rel}:{n}: {line.strip()[:120]}")
    return found


def test_the_walk_sees_the_repository() -> None:
    files = repo_files()
    assert "pyproject.toml" in files and "docs/protocol.md" in files and "core_ike/me/checks.py" in files
    assert not any(p.startswith(".venv/") for p in files)


def test_no_citation_of_documents_outside_the_repository() -> None:
    found = hits(OUTSIDE, EXEMPT)
    assert not found, ("cite an RFC / draft section or docs/protocol.md / docs/nat-lab.md instead:\n"
                       + "\n".join(found))


def test_the_pattern_catches_what_it_must() -> None:
    for bad in ("# reference §7.2 INTEROP", "(netlab.md §11)", "weakness #15", "`../shared/design.md`",
                "see ike-me-protocol.md 7.1", "(reference doc 11 item 2)", "the limits of ref. §4.2"):
        assert OUTSIDE.search(bad), bad
    for good in ("# docs/protocol.md §7.2", "RFC 7296 §2.6", "draft-brunner-ikev2-mediation §4.2",
                 "a reference to the key", "the reference implementation"):
        assert not OUTSIDE.search(good), good


def test_cited_docs_exist() -> None:
    missing = []
    for rel, text in texts():
        for m in DOC_PATH.finditer(text):
            if not (ROOT / "docs" / m.group(1)).is_file():
                missing.append(f"{rel}: docs/{m.group(1)}")
    assert not missing, "cited but not in docs/:\n" + "\n".join(sorted(set(missing)))


def headings(name: str) -> set[str]:
    return set(HEADING.findall((ROOT / "docs" / f"{name}.md").read_text(encoding="utf-8")))


def test_cited_sections_exist() -> None:
    known = {name: headings(name) for name in ("protocol", "nat-lab")}
    assert {"4.4", "7.2", "11.9"} <= known["protocol"] and {"4.2", "5.1", "7.4"} <= known["nat-lab"]
    bad, cited = [], 0
    for rel, text in texts():
        for m in SECTION_CITE.finditer(text):
            for sec in SECTION.findall(m.group(2)):
                cited += 1
                if sec not in known[m.group(1)]:
                    bad.append(f"{rel}: docs/{m.group(1)}.md §{sec}")
    assert cited > 50  # the code does cite them
    assert not bad, "no such section:\n" + "\n".join(sorted(set(bad)))


def test_section_pattern() -> None:
    m = SECTION_CITE.search("(docs/protocol.md §7.1-§7.3, §4 and §11.10)")
    assert m is not None and SECTION.findall(m.group(2)) == ["7.1", "7.3", "4", "11.10"]
    m = SECTION_CITE.search("``docs/nat-lab.md`` §2")
    assert m is not None and SECTION.findall(m.group(2)) == ["2"]


def test_design_principles_are_in_contributing() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    part = text.split("## Design principles", 1)[1].split("\n## ", 1)[0]
    numbers = set(re.findall(r"^(\d+)\. ", part, re.MULTILINE))
    assert len(numbers) >= 10
    bad = []
    for rel, body in texts():
        if rel == "CONTRIBUTING.md":
            continue
        bad += [f"{rel}: design principle {n}" for n in PRINCIPLE_CITE.findall(body) if n not in numbers]
    assert not bad, "\n".join(bad)
