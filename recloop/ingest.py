"""Landing a source's rows: quarantine first, then the warehouse, then the event log.

Order matters for "nothing is lost": rejected rows are on disk (with file, line, field and
reason) before anything is checked or landed; users and items land before the events that
refer to them; events go through the event log, which is idempotent, so a rerun after a crash
completes the landing without duplicating anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
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
    _land_rows(
        settings,
        report,
        dataset.users,
        dataset.items,
        _batches(dataset.events, show_progress=show_progress),
    )
    return report


def _batches(events: list, *, show_progress: bool = False) -> Iterator[list]:
    """The events in batches of EVENT_BATCH, with a progress bar."""
    from rich.progress import Progress

    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("appending events", total=len(events))
        for start in range(0, len(events), EVENT_BATCH):
            yield events[start : start + EVENT_BATCH]
            progress.advance(task, min(EVENT_BATCH, len(events) - start))


def _land_rows(
    settings: Settings, report: IngestReport, users: list, items: list, batches: Iterable[list]
) -> None:
    """Users and items first (events refer to them), then the events batch by batch."""
    warehouse.init_warehouse(settings)
    warehouse.upsert(settings, "users", users)
    warehouse.upsert(settings, "items", items)
    with open_event_log(settings) as log:
        for batch in batches:
            if batch:
                result = log.append(batch)
                report.events_appended += result.appended
                report.events_duplicate += result.duplicates
    # The local events view must see the segments just sealed (Postgres's view is live).
    warehouse.init_warehouse(settings)


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

    def days() -> Iterator[list]:
        for events in generate_traffic(world, show_progress=show_progress):
            report.events += len(events)
            yield events

    _land_rows(settings, report, world.users, world.items, days())
    settings.simulator_state_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return report
