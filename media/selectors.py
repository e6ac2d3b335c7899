"""Reads the chat and the uploads page share: the previews of lines, an account's uploads."""

from dataclasses import dataclass

from django.db.models import Count, QuerySet, Sum

from channels_app.models import Message
from media.listeners import PREVIEWED_KINDS
from media.models import LinkPreview, Upload
from media.previews import links_in

# Lines one request may ask previews for (a page of the chat holds 100).
MAX_LINES_PER_REQUEST = 200


@dataclass(frozen=True)
class LinePreviews:
    message_id: int
    previews: list[LinkPreview]


def previews_for_lines(message_ids: list[int]) -> list[LinePreviews]:
    """The kept previews of the links in these lines (of the active account), in the lines'
    and links' order; lines without one are left out. Two queries, whatever the number of
    lines; the images' bytes are not read."""
    rows = Message.objects.filter(
        pk__in=message_ids[:MAX_LINES_PER_REQUEST],
        kind__in=PREVIEWED_KINDS,
        text__iregex=r"https?://",
    ).values_list("id", "text")
    links = {message_id: links_in(text) for message_id, text in rows}
    wanted = {url for urls in links.values() for url in urls}
    if not wanted:
        return []
    found = {
        p.url: p
        for p in LinkPreview.objects.filter(url__in=wanted, status=LinkPreview.Status.OK).defer(
            "image"
        )
    }
    result = []
    for message_id in sorted(links):
        shown = [found[url] for url in links[message_id] if url in found]
        if shown:
            result.append(LinePreviews(message_id, shown))
    return result


def uploads() -> QuerySet[Upload]:
    return Upload.objects.all()


@dataclass(frozen=True)
class Usage:
    count: int
    total_bytes: int


def usage() -> Usage:
    totals = Upload.objects.aggregate(count=Count("id"), total=Sum("size"))
    return Usage(count=totals["count"], total_bytes=totals["total"] or 0)
