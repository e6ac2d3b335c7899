"""Writes of link previews: which links of stored lines get one, fetching and keeping it, and
telling the account's open chats (a `preview` event per line).

The message hook (channels_app.hooks, via media.listeners) hands over a batch of lines; links
with a fresh preview are announced at once, the others go, within the account's
LIMIT_LINK_PREVIEWS_PER_MINUTE, to one task for the whole batch (media.tasks.fetch_previews).
"""

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from channels_app.events import PreviewEvent, publish_event_on_commit
from core.limits import take_allowance
from media import previews
from media.models import LinkPreview

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineLinks:
    message_id: int
    channel_id: int
    urls: list[str]

    def as_task_arg(self) -> list[object]:
        return [self.message_id, self.channel_id, self.urls]

    @classmethod
    def from_task_arg(cls, value: list[object]) -> "LineLinks":
        message_id, channel_id, urls = value
        assert isinstance(message_id, int) and isinstance(channel_id, int)
        assert isinstance(urls, list)
        return cls(message_id, channel_id, [str(u) for u in urls])


def _fresh(urls: Iterable[str]) -> dict[str, str]:
    """url -> status of the previews still fresh among `urls`."""
    return dict(
        LinkPreview.objects.filter(url__in=list(urls), expires_at__gt=timezone.now()).values_list(
            "url", "status"
        )
    )


def announce(account_id: uuid.UUID | str, lines: Iterable[LineLinks], ready: set[str]) -> int:
    """A `preview` event for each line with a link in `ready`; how many were sent."""
    sent = 0
    for line in lines:
        if any(url in ready for url in line.urls):
            publish_event_on_commit(
                account_id, PreviewEvent(message_id=line.message_id, channel_id=line.channel_id)
            )
            sent += 1
    return sent


def queue_previews(*, account_id: uuid.UUID | str, lines: list[LineLinks]) -> list[str]:
    """Announce the lines whose links have a fresh preview; queue one fetch for the links that
    have none (within the per-minute bound). Returns the links queued."""
    from media.tasks import fetch_previews

    urls = list(dict.fromkeys(url for line in lines for url in line.urls))
    if not urls:
        return []
    fresh = _fresh(urls)
    ready = {url for url, status in fresh.items() if status == LinkPreview.Status.OK}
    missing = [url for url in urls if url not in fresh]
    allowed = take_allowance(
        key=f"link-previews-per-minute:{account_id}",
        wanted=len(missing),
        limit=settings.LIMIT_LINK_PREVIEWS_PER_MINUTE,
    )
    if allowed < len(missing):
        logger.info(
            "account %s: %d links go without a preview (LIMIT_LINK_PREVIEWS_PER_MINUTE)",
            account_id,
            len(missing) - allowed,
        )
    missing = missing[:allowed]
    # A line waits for the task when it has a link being fetched; the others are told now.
    waiting = [line for line in lines if set(line.urls) & set(missing)]
    announce(account_id, [line for line in lines if line not in waiting], ready)
    if missing:
        fetch_previews.delay(missing, [line.as_task_arg() for line in waiting])
    return missing


def refresh_preview(*, url: str) -> LinkPreview:
    """Fetch `url`'s preview and keep it (or keep the failure, for a shorter time)."""
    now = timezone.now()
    try:
        found = previews.fetch_preview(url)
    except previews.PreviewError as exc:
        fields: dict[str, object] = {
            "status": LinkPreview.Status.FAILED,
            "title": "",
            "description": "",
            "site_name": "",
            "image": None,
            "image_type": "",
            "image_width": 0,
            "image_height": 0,
            "error": str(exc)[:300],
            "expires_at": now + timedelta(seconds=settings.LINK_PREVIEW_FAILURE_SECONDS),
        }
    else:
        image = found.image
        fields = {
            "status": LinkPreview.Status.OK,
            "title": found.meta.title,
            "description": found.meta.description,
            "site_name": found.meta.site_name,
            "image": image.data if image else None,
            "image_type": image.content_type if image else "",
            "image_width": image.width if image else 0,
            "image_height": image.height if image else 0,
            "error": "",
            "expires_at": now + timedelta(seconds=settings.LINK_PREVIEW_CACHE_SECONDS),
        }
    fields["fetched_at"] = now
    try:
        preview, _ = LinkPreview.objects.update_or_create(url=url, defaults=fields)
    except IntegrityError:  # another worker kept the same link meanwhile: theirs stands
        preview = LinkPreview.objects.get(url=url)
    return preview


def forget_stale() -> int:
    """Delete the previews expired for a day or more: a link not posted again since is not
    worth its row (and its image). Run by each fetch, so an account's table stays the size of
    its recent links without a periodic job over every schema."""
    cutoff = timezone.now() - timedelta(days=1)
    deleted, _ = LinkPreview.objects.filter(expires_at__lt=cutoff).delete()
    return deleted


def fetch_and_announce(
    *, account_id: uuid.UUID | str, urls: list[str], lines: list[LineLinks]
) -> int:
    """The task's work: fetch each link (again only if no fresh preview appeared meanwhile),
    then announce the lines that have one. Returns how many lines were announced."""
    forget_stale()
    fresh = _fresh(urls)
    ready = {url for url, status in fresh.items() if status == LinkPreview.Status.OK}
    for url in urls:
        if url in fresh:
            continue
        if refresh_preview(url=url).status == LinkPreview.Status.OK:
            ready.add(url)
    return announce(account_id, lines, ready)
