"""Reads of exports, in the active account's schema: the list, one by id (404 otherwise), and
what the page says of one (its state with expiry applied, progress, time left)."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone
from tqdm import tqdm

from exports.models import Export


def exports() -> QuerySet[Export]:
    return Export.objects.all()


def export_or_404(pk: uuid.UUID) -> Export:
    """The active account's export `pk`: another account's is not in this schema, so 404."""
    found = Export.objects.filter(pk=pk).first()
    if found is None:
        raise Http404("No such export.")
    return found


def is_expired(export: Export, now: datetime | None = None) -> bool:
    """Past its link's expiry, whether or not the sweep has deleted the file yet."""
    if export.status == Export.Status.EXPIRED:
        return True
    moment = now or timezone.now()
    return (
        export.status == Export.Status.READY
        and export.expires_at is not None
        and export.expires_at <= moment
    )


def is_downloadable(export: Export, now: datetime | None = None) -> bool:
    return (
        export.status == Export.Status.READY
        and bool(export.file_name)
        and not is_expired(export, now)
    )


@dataclass(frozen=True)
class ExportView:
    """An export as its page shows it."""

    export: Export
    state: str  # one of Export.Status's values, expiry applied
    label: str
    done: int
    total: int
    percent: int
    time_left: str  # "01:05" (tqdm's format, as the commands' bars show it); "" when unknown

    @property
    def in_progress(self) -> bool:
        return self.state in Export.IN_PROGRESS

    @property
    def downloadable(self) -> bool:
        return self.state == Export.Status.READY

    @property
    def counts(self) -> str:
        return f"{self.done:,} of {self.total:,} lines"


def describe(export: Export, now: datetime | None = None) -> ExportView:
    moment = now or timezone.now()
    state = Export.Status.EXPIRED if is_expired(export, moment) else Export.Status(export.status)
    total = max(export.lines_total, export.lines_done)
    done = export.lines_done
    if state == Export.Status.READY:
        done = total
    percent = (
        100
        if total == 0 and state == Export.Status.READY
        else (int(done * 100 / total) if total else 0)
    )
    time_left = ""
    if state == Export.Status.RUNNING and export.started_at and 0 < done < total:
        elapsed = (moment - export.started_at).total_seconds()
        if elapsed > 0:
            time_left = tqdm.format_interval((total - done) * elapsed / done)
    return ExportView(
        export=export,
        state=state,
        label=Export.Status(state).label,
        done=done,
        total=total,
        percent=percent,
        time_left=time_left,
    )
