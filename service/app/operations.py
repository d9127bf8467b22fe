"""The running service's operations: the jobs beside the servicers (the key file reload, the
retention schedule, the scheduled calibration proposal) and the figures the metrics show of
the engine (templates in the index, the outbox backlog). The API layer starts, stops and shows
them; it does not reach into the engine's store, index or outbox.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from service import metrics
from service.app.assembly import key_file_path
from service.app.calibration import scheduled_proposal
from service.app.engine import Engine
from service.app.retention import PurgeSchedule, purge
from service.config import Settings
from service.store.key_reload import KeyringReloader
from service.store.outbox import Outbox


class Stoppable(Protocol):
    def stop(self) -> None: ...


def template_count(engine: Engine) -> int:
    """Templates in the engine's vector index."""
    return len(engine.gallery.index)


def outbox_stats(outbox: Outbox) -> metrics.OutboxStats:
    """Pending callbacks and the age of the oldest, read from the risk outbox."""
    depth, oldest = outbox.backlog()
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
    return metrics.OutboxStats(depth, max(0.0, age))


def outbox_reader(engine: Engine) -> Callable[[], metrics.OutboxStats] | None:
    """What reads the outbox backlog for the metrics; None without risk checks."""
    if engine.risk is None:
        return None
    return functools.partial(outbox_stats, engine.risk.outbox)


def start_jobs(engine: Engine, settings: Settings) -> list[Stoppable]:
    """Start the background jobs the settings ask for; the caller stops them."""
    running: list[Stoppable] = []
    key_file = key_file_path(settings)
    if key_file is not None:
        reloader = KeyringReloader(engine.gallery.store, key_file)
        reloader.start()
        running.append(reloader)
    privacy = settings.privacy
    if privacy.purge_every_hours is not None:
        schedule = PurgeSchedule(
            lambda: purge(
                engine.gallery.store,
                engine.gallery.delete,
                privacy.inactive_days,
                datetime.now(UTC),
                outbox_keep_days=privacy.outbox_keep_days,
            ),
            privacy.purge_every_hours * 3600.0,
        )
        schedule.start()
        running.append(schedule)
    calibration = settings.calibration
    if calibration.every_hours > 0:  # proposes only: an admin approves
        job = PurgeSchedule(
            lambda: scheduled_proposal(engine, calibration),
            calibration.every_hours * 3600.0,
            name="calibration",
        )
        job.start()
        running.append(job)
    return running
