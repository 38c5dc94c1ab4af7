"""Radiology report text: section extraction, sentence splitting and token counting.

Pre-training pairs an image with the FINDINGS and IMPRESSION sections of its report, split into
sentences (docs/protocol.md). Sentence splitting is a rule-based regex splitter rather than a
statistical model, so preparing data never downloads anything and gives the same result on
every machine. The rules cover what free-text chest X-ray reports contain: hard-wrapped lines,
numbered impression lists ("1. ... 2. ..."), decimal sizes ("1.5 cm"), title abbreviations
("Dr. ___"), and de-identification blanks ("___") that can make up a whole "sentence".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A section header starts a line: an upper-case phrase (letters, digits, spaces and a few
# punctuation marks, at most 60 characters) ending with ':' - e.g. "FINDINGS:", "IMPRESSION:",
# "FINDINGS AND IMPRESSION:", "RECOMMENDATION(S):". Times such as "10:30" never match (no letter).
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ,()/&'\-]{0,58}[A-Z)])[ \t]*:", re.MULTILINE)

# Upper-case labels that structure the inside of a FINDINGS section ("LUNGS: Clear. HEART: ...")
# rather than start a new section: they stay in the body text.
SUBSECTIONS = frozenset(
    {
        "LUNG",
        "LUNGS",
        "HEART",
        "PLEURA",
        "PLEURAL SPACES",
        "MEDIASTINUM",
        "CARDIOMEDIASTINAL",
        "HILA",
        "AIRWAYS",
        "BONES",
        "OSSEOUS STRUCTURES",
        "SOFT TISSUES",
        "ABDOMEN",
        "UPPER ABDOMEN",
        "DEVICES",
        "SUPPORT DEVICES",
        "LINES AND TUBES",
        "LINES/TUBES",
        "TUBES AND LINES",
        "TUBES/LINES",
    }
)

# Words before a '.' that do not end a sentence even when a capital letter follows.
ABBREVIATIONS = frozenset(
    {
        "dr",
        "drs",
        "mr",
        "mrs",
        "ms",
        "prof",
        "st",
        "e.g",
        "i.e",
        "eg",
        "ie",
        "vs",
        "approx",
        "cf",
        "fig",
        "incl",
    }
)
_CANDIDATE = re.compile(r"[.!?]+[\"')\]]*\s+")
_ENUMERATOR = re.compile(r"^\(?\d{1,2}[.)]\s*")
_LIST_ITEM_START = re.compile(r"\n[ \t]*(?=\(?\d{1,2}[.)]\s)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"[A-Za-z0-9]+(?:[.'\-][A-Za-z0-9]+)*")
_ALNUM = re.compile(r"[A-Za-z0-9]")


@dataclass(frozen=True)
class ReportText:
    """What pre-training uses from one report."""

    findings: str
    impression: str
    text: str  # findings + impression, whitespace-normalised
    sentences: list[str]
    n_tokens: int


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def extract_sections(report: str) -> dict[str, str]:
    """Split a report into {HEADER: body}; text before the first header is stored under "".

    Anatomical labels inside a section (`SUBSECTIONS`, e.g. "LUNGS:") stay part of its body. Bodies keep their line breaks (paragraphs matter to the sentence splitter). A header that
    occurs twice (e.g. an addendum) gets both bodies joined by a blank line.
    """
    sections: dict[str, str] = {}
    matches = [m for m in _HEADER.finditer(report) if " ".join(m.group(1).split()) not in SUBSECTIONS]
    starts = [m.start() for m in matches] + [len(report)]
    preamble = report[: starts[0]].strip()
    if preamble:
        sections[""] = preamble
    for match, end in zip(matches, starts[1:]):
        name = " ".join(match.group(1).split())
        body = report[match.end() : end].strip()
        sections[name] = f"{sections[name]}\n\n{body}" if sections.get(name) else body
    return sections


def findings_and_impression(report: str) -> tuple[str, str]:
    """The FINDINGS (also "FINDING", "FINDINGS AND IMPRESSION") and IMPRESSION(S) section bodies."""
    findings, impression = [], []
    for name, body in extract_sections(report).items():
        if name.startswith("FINDING"):
            findings.append(body)
        elif name.startswith("IMPRESSION"):
            impression.append(body)
    return "\n\n".join(b for b in findings if b), "\n\n".join(b for b in impression if b)


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences without any model.

    Boundaries: blank lines, a new line starting a numbered item, and '.', '!' or '?' followed by
    whitespace - unless the next character is lower case, the word before the period is a known
    abbreviation or a single letter (an initial), or it is "No." before a number. Enumerators
    ("1.", "2)") are removed; sentences without any letter or digit (e.g. "___.") are dropped.
    """
    sentences: list[str] = []
    for paragraph in _PARAGRAPH.split(_LIST_ITEM_START.sub("\n\n", text)):
        flat = normalize_whitespace(paragraph)
        start = 0
        for match in _CANDIDATE.finditer(flat):
            if _is_boundary(flat, match):
                sentences.append(flat[start : match.end()].strip())
                start = match.end()
        sentences.append(flat[start:].strip())
    cleaned = []
    for sentence in sentences:
        sentence = _ENUMERATOR.sub("", sentence).strip()
        if _ALNUM.search(sentence):
            cleaned.append(sentence)
    return cleaned


def _is_boundary(text: str, match: re.Match) -> bool:
    after = text[match.end() : match.end() + 1]
    if after.islower():
        return False
    if text[match.start()] != ".":
        return True
    word = text[: match.start()].rsplit(" ", 1)[-1].lower().lstrip("(\"'")
    if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    if word == "no" and after.isdigit():
        return False
    # "1." at the very start of a sentence is a list enumerator, not a sentence of its own.
    return not (word.isdigit() and len(word) <= 2 and _sentence_start(text, match.start() - len(word)))


def _sentence_start(text: str, position: int) -> bool:
    before = text[:position].rstrip()
    return not before or before[-1] in ".!?:"


def count_tokens(text: str) -> int:
    """Word tokens (letters/digits; "1.5" and "x-ray" count once; "___" and punctuation do not)."""
    return len(_WORD.findall(text))


def parse_report(report: str) -> ReportText:
    """Findings + impression of one report as normalised text, sentences and token count."""
    findings, impression = findings_and_impression(report)
    text = normalize_whitespace(f"{findings} {impression}")
    sentences = split_sentences(findings) + split_sentences(impression)
    return ReportText(
        findings=normalize_whitespace(findings),
        impression=normalize_whitespace(impression),
        text=text,
        sentences=sentences,
        n_tokens=count_tokens(text),
    )
