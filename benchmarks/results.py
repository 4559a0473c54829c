"""The one output format every benchmark uses, and the table in RESULTS.md.

Each figure is reported as a ratio to a reference measured in the same run, because absolute
timings on these shared 2-core machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "| benchmark | metric | protocol | value | unit | reference | reference value | ratio "
    "| machine | date |\n"
    "| --- | --- | --- | ---: | --- | --- | ---: | ---: | --- | --- |\n"
)
TITLE = (
    "# Benchmark results\n\n"
    "Written by the scripts in this folder (`python -m benchmarks.<name> --json`); each row is "
    "replaced when its script runs again. Ratios compare with a reference measured in the same "
    "run.\n\n"
)


@dataclass
class Row:
    benchmark: str
    metric: str
    value: float
    unit: str
    reference: str
    reference_value: float
    protocol: str = ""
    model: str = ""  # quality rows: which model the value belongs to
    digits: int = 1  # decimals in the table (metrics in [0, 1] need more than timings)

    @property
    def ratio(self) -> float:
        return self.value / self.reference_value if self.reference_value else float("nan")

    @property
    def label(self) -> str:
        """The table's metric cell."""
        return f"{self.metric} ({self.model})" if self.model else self.metric

    def key(self) -> tuple[str, ...]:
        """What identifies a row in the table: a rerun replaces the row with the same key."""
        if self.model:
            return (self.benchmark, self.label, self.protocol)
        return (self.benchmark, self.metric)

    def to_json(self) -> str:
        # Quality rows carry their protocol and model; the others describe them in the table.
        skip = {"digits"} if self.model else {"digits", "model", "protocol"}
        data = {key: value for key, value in asdict(self).items() if key not in skip}
        data["ratio"] = round(self.ratio, 4)
        return json.dumps(data)


def machine() -> str:
    """Architecture, processor model and cores: sessions land on machines of one size whose
    processors differ (BentoML's /healthz ceiling was 3,024 req/s on one, 909 on another), so
    a row says which it came from."""
    return (f"{platform.machine()} {processor()}{os.cpu_count()} cores, "
            f"Python {platform.python_version()}")  # fmt: skip


def processor() -> str:
    """The processor's model name from /proc/cpuinfo with a trailing ", " (empty elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]}, " if names else ""


def record(rows: list[Row], path: Path = RESULTS) -> None:
    """Replace this benchmark's rows in RESULTS.md (other benchmarks' rows are kept)."""
    kept: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if (
                line.startswith("| ")
                and len(cells) > 2
                and not line.startswith("| benchmark")
                and not cells[0].startswith("---")  # the header's separator row
                and not any(tuple(cells[: len(r.key())]) == r.key() for r in rows)
            ):
                kept.append(line)
    today = datetime.now(UTC).date().isoformat()
    for row in rows:
        kept.append(
            f"| {row.benchmark} | {row.label} | {row.protocol} | {row.value:,.{row.digits}f} "
            f"| {row.unit} | {row.reference} | {row.reference_value:,.{row.digits}f} "
            f"| {row.ratio:.2f} | {machine()} "
            f"| {today} |"
        )
    path.write_text(TITLE + HEADER + "\n".join(sorted(kept)) + "\n")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script has."""
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")


def publish(rows: list[Row], args: argparse.Namespace, describe: Callable[[Row], str]) -> None:
    """Record the rows in RESULTS.md (unless --no-record) and print them (JSON with --json)."""
    if not args.no_record:
        record(rows)
    for row in rows:
        print(row.to_json() if args.json else describe(row))
