"""Every figure that README.md and docs/*.md present as measured appears in its results file.

The convention (stated in docs/bench.md, "How figures in the docs are checked"):

- A *citation* is a path ``benchmarks/results/NAME.md`` or ``NAME.json`` (or ``NAME.{md,json}`` /
  ``NAME.{json,md}`` / ``NAME.*`` for both, or ``NAME/`` for every .md/.json file in that folder). A cited file or folder
  that does not exist fails the test.
- A citation covers every number of its *block*: a paragraph, a list item (with its continuation
  lines) or a table row. A table, and a list, also take the citations of the paragraph that
  introduces it (the block directly above it).
- Numbers inside backticks, link targets and code fences are not figures (commands, file names),
  nor are numbers glued to letters (``ResNet18``, ``1080p``, ``p99``, ``fp32``) or after ``#``.
- A figure matches a number in the cited files when it equals that number rounded to the figure's
  shown precision (half a unit of its last digit); a figure followed by ``%``, or a decimal figure
  between 1 and 100 (percent tables), also matches a fraction (0.864 for 86.4 %). Signs count.

The test is text-only (no benchmark is run): it reads the Markdown and the results files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

CITATION = re.compile(r"benchmarks/results/([A-Za-z0-9_][A-Za-z0-9_./-]*?)(\.\{md,json\}|\.\{json,md\}|\.\*|\.md|\.json|/)(?![A-Za-z0-9_])")
NUMBER = re.compile(
    r"(?<![A-Za-z0-9_.#])(?<![A-Za-z]-)"  # not glued to a word (AVX-512), a number or an issue number
    r"(?P<sign>[-−+])?"
    r"(?P<mant>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:[eE](?P<exp>[-+]?\d+))?"
    r"(?![A-Za-z0-9_]|-[A-Za-z]|\.\d|,\d{3})"
    r"(?P<pct>\s?%)?"
)
LIST_ITEM = re.compile(r"^\s*(?:[-*]|\d+\.)\s")


@dataclass(frozen=True)
class Figure:
    text: str
    value: float
    half_unit: float
    percent: bool


def _figures(text: str) -> list[Figure]:
    out = []
    for m in NUMBER.finditer(text):
        # a sign only counts when it is not a range dash between two words/numbers
        sign = m.group("sign") or ""
        start = m.start("sign") if sign else m.start("mant")
        if sign and start > 0 and (text[start - 1].isalnum() or text[start - 1] in ".)"):
            sign = ""
        mant = m.group("mant").replace(",", "")
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        exp = int(m.group("exp")) if m.group("exp") else 0
        value = float(mant) * 10.0**exp
        if sign in ("-", "−"):
            value = -value
        out.append(Figure(m.group(0).strip(), value, 0.5 * 10.0 ** (exp - decimals), bool(m.group("pct"))))
    return out


def _strip_code(line: str) -> str:
    line = re.sub(r"`[^`]*`", " ", line)
    line = re.sub(r"\]\([^)]*\)", "] ", line)  # link targets
    return re.sub(r"<[^>]+>", " ", line)  # HTML tags / autolinks


def _blocks(path: Path) -> list[tuple[int, str, str]]:
    """(first line number, kind, text) for each paragraph, list item and table row outside code fences."""
    blocks: list[tuple[int, str, str]] = []
    fence = False
    current: list[str] | None = None
    start = 0
    kind = ""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            current = None
            continue
        if fence or not line.strip() or line.lstrip().startswith("#"):
            current = None
            continue
        if line.lstrip().startswith("|"):
            blocks.append((n, "row", line))
            current = None
            continue
        if LIST_ITEM.match(line) or current is None or kind == "row":
            kind = "item" if LIST_ITEM.match(line) else "para"
            current = [line]
            start = n
            blocks.append((start, kind, line))
        else:
            current.append(line)
            blocks[-1] = (start, kind, "\n".join(current))
    return blocks


def _cited_files(text: str) -> list[Path]:
    files: list[Path] = []
    for m in CITATION.finditer(text):
        name, ext = m.group(1), m.group(2)
        if ext == "/":
            folder = RESULTS / name
            if not folder.is_dir():
                files.append(folder)  # reported as missing
            else:  # a folder of images only (crop PNGs) is no figure source
                files += sorted(p for p in folder.rglob("*") if p.suffix in (".md", ".json"))
        elif ext in (".{md,json}", ".{json,md}", ".*"):
            files += [RESULTS / f"{name}.md", RESULTS / f"{name}.json"]
        else:
            files.append(RESULTS / f"{name}{ext}")
    return files


def _claims(path: Path) -> list[tuple[int, str, list[Path]]]:
    """Each block with its citations, tables and lists inheriting their introducing paragraph's."""
    claims = []
    intro: list[Path] = []
    previous_kind, previous_end = "", -10
    for n, kind, text in _blocks(path):
        own = _cited_files(text)
        if kind == "para":
            intro = own
        elif not (previous_kind == kind or (previous_kind == "para" and n - previous_end <= 2)):
            intro = []  # a table or list not introduced by the paragraph above
        claims.append((n, text, own if kind == "para" else own + intro))
        previous_kind, previous_end = kind, n + text.count("\n")
    return claims


_NUMBERS_CACHE: dict[Path, list[float]] = {}


def _numbers_in(path: Path) -> list[float]:
    if path not in _NUMBERS_CACHE:
        text = path.read_text(encoding="utf-8", errors="replace")
        values = [f.value for f in _figures(text)]
        # also read "a,b" lists (JSON arrays without spaces) as separate numbers
        values += [float(x) for x in re.findall(r"(?<![\d.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text)]
        _NUMBERS_CACHE[path] = values
    return _NUMBERS_CACHE[path]


def _matches(fig: Figure, values: list[float]) -> bool:
    # a percentage (marked with %, or a decimal figure in a percent table) may be a fraction in the file
    as_fraction = fig.percent or (fig.half_unit < 0.5 and 1.0 <= abs(fig.value) <= 100.0)
    targets = [fig.value, fig.value / 100.0] if as_fraction else [fig.value]
    for target, half in zip(targets, [fig.half_unit, fig.half_unit / 100.0]):
        tol = half * (1 + 1e-9) + 1e-12
        if any(math.isclose(v, target, abs_tol=tol) or abs(v - target) <= tol for v in values):
            return True
    return False


CASES = [(p, n, text, cites) for p in DOCS for n, text, cites in _claims(p) if cites]


def test_readme_results_section_cites_every_figure():
    """Every figure under README's "Results measured here" sits in a block that cites its results file."""
    readme = ROOT / "README.md"
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next(n for n, line in enumerate(lines, 1) if line.startswith("## Results measured here"))
    end = next(n for n, line in enumerate(lines, 1) if n > start and line.startswith("## "))
    uncited = [
        f"README.md:{n}: {[f.text for f in _figures(_strip_code(text))]}"
        for n, text, cites in _claims(readme)
        if start < n < end and not cites and _figures(_strip_code(text))
    ]
    assert not uncited, "figures without a results file:\n" + "\n".join(uncited)


def test_docs_cite_results_files():
    """The convention is in use: README and the docs cite results files for their figures."""
    assert any(p.name == "README.md" for p, *_ in CASES)
    assert len(CASES) >= 20


@pytest.mark.parametrize(
    ("path", "line", "text", "cites"),
    CASES,
    ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, *_ in CASES],
)
def test_cited_figures_appear_in_their_results_files(path, line, text, cites):
    missing_files = sorted({str(c.relative_to(ROOT)) for c in cites if not c.is_file()})
    assert not missing_files, f"{path.name}:{line} cites results that do not exist: {missing_files}"
    values = [v for c in dict.fromkeys(cites) for v in _numbers_in(c)]
    absent = [f.text for f in _figures(_strip_code(text)) if not _matches(f, values)]
    names = ", ".join(sorted({c.name for c in cites}))
    assert not absent, f"{path.name}:{line}: figures {absent} are not in {names}:\n{text}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.5953 and 86.4 % and −0.8 points", [("0.5953", 0.5953), ("86.4 %", 86.4), ("−0.8", -0.8)]),
        ("ResNet18 at 1080p, p99 fp32 int8 #9", []),
        ("0.69–0.74 and 6.0e-14", [("0.69", 0.69), ("0.74", 0.74), ("6.0e-14", 6.0e-14)]),
        ("20,000 frames, 1.16×", [("20,000", 20000.0), ("1.16", 1.16)]),
    ],
)
def test_figure_parsing(text, expected):
    assert [(f.text, f.value) for f in _figures(text)] == [(t, pytest.approx(v)) for t, v in expected]


def test_rounding_and_percent_matching():
    (fig,) = _figures("86.4 %")
    assert _matches(fig, [0.86401]) and not _matches(fig, [0.8651])
    (fig,) = _figures("0.70")
    assert _matches(fig, [0.7]) and not _matches(fig, [0.706])
    (fig,) = _figures("-0.067")
    assert _matches(fig, [-0.067]) and not _matches(fig, [0.067])
