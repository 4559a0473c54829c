"""Landing a source's rows: quarantine first, then the warehouse, then the event log.

Order matters for "nothing is lost": rejected rows are on disk (with file, line, field and
reason) before anything is checked or landed; users and items land before the events that
refer to them; events go through the event log, which is idempotent, so a rerun after a crash
completes the landing without duplicating anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recloop import warehouse
from recloop.eventlog import open_event_log
from recloop.settings import Settings
from recloop.sources.movielens import Dataset, QuarantinedRow, SourceError, load_movielens

EVENT_BATCH = 10_000


@dataclass
class IngestReport:
    source: str
    users: int = 0
    items: int = 0
    events: int = 0
    events_appended: int = 0
    events_duplicate: int = 0
    rejected: int = 0
    quarantine_file: str | None = None
    files: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_quarantine(settings: Settings, source: str, rows: list[QuarantinedRow]) -> Path | None:
    """Write rejected rows to a JSON Lines file under the quarantine folder (fsynced)."""
    if not rows:
        return None
    settings.ensure_home()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = settings.quarantine_dir / f"{source}-{stamp}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.to_record(), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


def land(settings: Settings, dataset: Dataset, *, show_progress: bool = False) -> IngestReport:
    """Quarantine, check rejection shares, then land users, items and events."""
    report = IngestReport(
        source=dataset.name,
        users=len(dataset.users),
        items=len(dataset.items),
        events=len(dataset.events),
        rejected=len(dataset.quarantined),
        files={name: {"rows": s.rows, "rejected": s.rejected} for name, s in dataset.files.items()},
    )
    quarantine = write_quarantine(settings, dataset.name, dataset.quarantined)
    report.quarantine_file = str(quarantine) if quarantine else None
    limit = settings.ingest.max_rejected_share
    for name, stats in dataset.files.items():
        if stats.rejected_share > limit:
            raise SourceError(
                f"{name}: {stats.rejected} of {stats.rows} rows rejected "
                f"({stats.rejected_share:.1%}), over the limit of {limit:.1%}; nothing was "
                f"landed; the rejected rows and their reasons are in {quarantine}"
            )
    warehouse.init_warehouse(settings)
    warehouse.upsert(settings, "users", dataset.users)
    warehouse.upsert(settings, "items", dataset.items)
    append_events(settings, dataset.events, report, show_progress=show_progress)
    with warehouse.connect(settings) as con:
        warehouse.refresh_events_view(con, settings)
    return report


def append_events(
    settings: Settings, events: list, report: IngestReport, *, show_progress: bool = False
) -> None:
    from rich.progress import Progress

    with (
        open_event_log(settings) as log,
        Progress(disable=not show_progress, transient=True) as progress,
    ):
        task = progress.add_task("appending events", total=len(events))
        for start in range(0, len(events), EVENT_BATCH):
            result = log.append(events[start : start + EVENT_BATCH])
            report.events_appended += result.appended
            report.events_duplicate += result.duplicates
            progress.advance(task, min(EVENT_BATCH, len(events) - start))


def ingest_movielens(
    settings: Settings, path: Path | str, *, show_progress: bool = False
) -> IngestReport:
    """Load a MovieLens folder (any of the three formats) and land it."""
    return land(settings, load_movielens(path), show_progress=show_progress)


def ingest_simulation(
    settings: Settings, config: Any, *, show_progress: bool = False
) -> IngestReport:
    """Build the simulated world, land its users and items, and log its traffic day by day.

    The world's config is saved beside the data (``simulator.json``) so that later steps can
    rebuild the same world and ask it for true click probabilities.
    """
    from recloop.sources.simulator import build_world, generate_traffic

    world = build_world(config)
    report = IngestReport(source="simulator", users=len(world.users), items=len(world.items))
    warehouse.init_warehouse(settings)
    warehouse.upsert(settings, "users", world.users)
    warehouse.upsert(settings, "items", world.items)
    with open_event_log(settings) as log:
        for events in generate_traffic(world, show_progress=show_progress):
            report.events += len(events)
            if events:
                result = log.append(events)
                report.events_appended += result.appended
                report.events_duplicate += result.duplicates
    with warehouse.connect(settings) as con:
        warehouse.refresh_events_view(con, settings)
    settings.simulator_state_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return report
