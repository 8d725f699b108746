"""The export report: every artifact with its sha256 and every check with its figures and aim.

Written last, as export_report.json + export_report.md beside the artifacts: a report that exists
describes a complete export.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

from usedge.fileio import sha256_file, write_json_atomic, write_text_atomic

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"


@dataclass
class Check:
    name: str                     # what was compared, e.g. "torch vs onnxruntime"
    artifact: str                 # file name the check is about
    passed: bool                  # met its aim
    aim: str                      # the target, in words
    figures: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class ExportReport:
    checkpoint: str
    checkpoint_sha256: str
    out_dir: str
    usedge_version: str = ""
    created_utc: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    settings: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)          # which images the checks used
    artifacts: dict = field(default_factory=dict)     # file name -> {sha256, bytes, precision, ...}
    checks: list[Check] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)       # artifact -> why it was not built
    not_run: dict = field(default_factory=dict)       # checks -> why they did not run (OpenVINO not installed)
    timings_s: dict = field(default_factory=dict)     # stage -> seconds (wall clock, this machine)
    removed_stale: list = field(default_factory=list)  # older artifacts that no longer matched, deleted

    def add_artifact(self, path: Path, **info) -> None:
        path = Path(path)
        self.artifacts[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, **info}

    def add_check(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = not self.failed
        return d

    def to_markdown(self) -> str:
        lines = ["# usedge export report", "",
                 f"- checkpoint: `{self.checkpoint}` (sha256 `{self.checkpoint_sha256[:16]}…`)",
                 f"- usedge {self.usedge_version}, {self.created_utc}",
                 f"- images: {self.data.get('source', 'none')} — {self.data.get('note', '')}", "",
                 "## Artifacts", "", "| file | precision | bytes | sha256 |", "|---|---|---:|---|"]
        for name, a in self.artifacts.items():
            lines.append(f"| {name} | {a.get('precision', '')} | {a['bytes']} | `{a['sha256'][:16]}…` |")
        for name, why in self.skipped.items():
            lines.append(f"| {name} | not built | | {why} |")
        for name in self.removed_stale:
            lines.append(f"| {name} | removed | | left by an earlier export; did not match this model |")
        lines += ["", "## Checks", "", "| check | artifact | result | figures | aim |", "|---|---|---|---|---|"]
        for c in self.checks:
            figs = ", ".join(f"{k}={_fmt(v)}" for k, v in c.figures.items())
            note = f" ({c.note})" if c.note else ""
            lines.append(f"| {c.name} | {c.artifact} | {'ok' if c.passed else 'MISSED'} | {figs}{note} | {c.aim} |")
        for name, why in self.not_run.items():
            lines.append(f"| {name} | | not run | {why} | |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / REPORT_MD, self.to_markdown())
        return write_json_atomic(out_dir / REPORT_JSON, self.to_dict())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 else "0"
    return str(v)
