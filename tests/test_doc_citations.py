"""What the code and docs cite is in the repository (issue 19): a docstring, comment or doc (docs/*.md, README.md)
that names a document names one under docs/, and a section of docs/protocol-notes.md ("Entra §2.6", "ConfigMgr
§2", "mTLS §1", "Lab §3") that the notes define, and a seed ("seed 001 §3.1") that the notes' seed table lists.
Notes kept outside the repository (the research notes, the lab contract) are never cited."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTES = (ROOT / "docs" / "protocol-notes.md").read_text(encoding="utf-8")
SOURCES = sorted(
    [
        *(ROOT / "cmglab").rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "docs").glob("*.md"),
        ROOT / "README.md",
    ]
)

# "docs/protocol-notes.md, Entra §2.6", "protocol-notes.md, Lab §3", "docs/protocol-notes.md, Entra §3.2–3.4"
SECTION = re.compile(r"protocol-notes\.md, (Entra|ConfigMgr|mTLS|Lab) §(\d+)")
SEED = re.compile(r"\bseeds? (\d{3})\b", re.IGNORECASE)
DOCUMENT = re.compile(r"\bdocs/[\w./-]+\.md\b")
# citations of notes that live outside the repository
OUTSIDE = re.compile(r"research ?§|research/|lab[ -]contract ?§|anchors-and-style|spec/lab-contract", re.IGNORECASE)


def cited(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(file:line, the match) for every match in cmglab/, tests/, docs/*.md and README.md, this module left out."""
    out: list[tuple[str, str]] = []
    for path in SOURCES:
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            out.extend((f"{path.relative_to(ROOT)}:{number}", m.group(0)) for m in pattern.finditer(line))
    return out


def test_cited_documents_exist() -> None:
    assert [(where, doc) for where, doc in cited(DOCUMENT) if not (ROOT / doc).is_file()] == []


def test_cited_protocol_note_sections_exist() -> None:
    missing = []
    for where, citation in cited(SECTION):
        m = SECTION.search(citation)
        assert m is not None
        area, major = m.groups()
        if not re.search(rf"\*\*{area} §{major}\b", NOTES):
            missing.append((where, citation))
    assert missing == []


def test_cited_seeds_are_in_the_notes_seed_table() -> None:
    listed = set(re.findall(r"^\| (\d{3}) \|", NOTES, re.MULTILINE))
    assert listed == {"000", "001", "002", "003", "004"}
    numbers = [(where, m.group(1)) for where, citation in cited(SEED) if (m := SEED.match(citation))]
    assert numbers, "the code cites the seeds"
    assert [(where, number) for where, number in numbers if number not in listed] == []


def test_nothing_cites_notes_outside_the_repository() -> None:
    assert cited(OUTSIDE) == []


def test_the_section_pattern_reads_the_citation_styles() -> None:
    assert SECTION.search("(docs/protocol-notes.md, Entra §3.2–3.4): the CSR") is not None
    assert SECTION.search("see docs/protocol-notes.md, Lab §5") is not None
    assert OUTSIDE.search("(research §2.2)") and OUTSIDE.search("lab contract §4")
