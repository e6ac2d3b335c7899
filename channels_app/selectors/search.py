"""Full-text search over the active account's history.

The query uses exactly the expression the `message_search` GIN index is built on
(`SEARCH_VECTOR`), so PostgreSQL can answer a selective query from the index. A common word is
cheaper the other way round: walking the newest lines backwards through a time index until a
page is full. `search_messages` picks the way from the planner's estimate of how many lines
match (see `index_threshold`), because the planner's own choice between them is often wrong.
Results are newest first, paged by keyset on (server_time, id): a page far back costs the same
as the first, and lines stored meanwhile never shift a page.

Snippets come from ts_headline with private-use markers, which this module turns into <mark>
only after escaping everything else (the line itself is untrusted text from IRC).
"""

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchVector
from django.db import OperationalError, connection, transaction
from django.db.models import F, Func, Q, QuerySet, Value
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from psycopg.errors import QueryCanceled

from channels_app.models import Message
from tenancy import NoTenantError
from tenancy.context import is_public

logger = logging.getLogger(__name__)

# Must stay identical to the expression of Message.Meta's `message_search` index, or the
# planner cannot use the index and every search scans the table.
SEARCH_VECTOR = SearchVector("text", "sender", config="simple")

# What people said, as opposed to joins, parts, quits and mode changes: searching for a nick
# should find their words, not every time they reconnected.
SEARCHABLE_KINDS = (
    Message.Kind.MESSAGE,
    Message.Kind.NOTICE,
    Message.Kind.ACTION,
    Message.Kind.TOPIC,
)

PAGE_SIZE = 50
# What a result shows, and all that is loaded for it.
HIT_FIELDS = (
    "id",
    "channel_id",
    "kind",
    "sender",
    "text",
    "server_time",
    "channel__name",
    "channel__kind",
    "channel__server__name",
)
MAX_QUERY_LENGTH = 200

# ts_headline's StartSel/StopSel. Private-use code points: they are removed from the line before
# ts_headline sees it, so every one in its output is a marker it put there.
START_MARK = "\ue000"
STOP_MARK = "\ue001"
_MARK_SPLIT = re.compile(f"([{START_MARK}{STOP_MARK}])")
# ts_headline drops whatever looks like an HTML tag ("use <div> here" -> "use  here"), so < and >
# go in as two more private-use stand-ins and come back out before escaping.
_LT, _GT = "\ue002", "\ue003"
_HEADLINE_FROM = f"<>{START_MARK}{STOP_MARK}{_LT}{_GT}"  # translate(): < > mapped, the rest gone
_HEADLINE_TO = f"{_LT}{_GT}"
_STAND_INS_BACK = str.maketrans({_LT: "<", _GT: ">"})

# mIRC formatting: colour (\x03 with up to two numbers), hex colour (\x04 with up to two RGB
# values), then bold, reset, monospace, reverse, italic, strikethrough, underline and every other
# control character.
_FORMATTING = re.compile(
    r"\x03(?:\d{1,2}(?:,\d{1,2})?)?"
    r"|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"
    r"|[\x00-\x08\x0b-\x1f\x7f]"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class SearchQueryError(ValueError):
    """The query cannot be searched for; the message says why, for the person who typed it."""


@dataclass(frozen=True)
class Cursor:
    """Where a page of results ends: the next page holds the lines before this one."""

    server_time: datetime
    id: int

    def encode(self) -> str:
        # Integer microseconds: a float timestamp would round, and the page would skip a line.
        micros = (self.server_time - _EPOCH) // _MICROSECOND
        return f"{micros}-{self.id}"

    @classmethod
    def decode(cls, value: str) -> "Cursor | None":
        """The cursor in a URL, or None when it is not one (a stale or edited link)."""
        match = re.fullmatch(r"(-?\d{1,18})-(\d{1,19})", value or "")
        if match is None:
            return None
        try:
            server_time = _EPOCH + int(match[1]) * _MICROSECOND
        except OverflowError:
            return None
        return cls(server_time=server_time, id=int(match[2]))


@dataclass(frozen=True)
class SearchHit:
    """One line found: what the results page shows of it, and where it leads."""

    id: int
    channel_id: int
    channel_name: str
    channel_kind: str
    server_name: str
    kind: str
    sender: str
    text: str
    server_time: datetime
    snippet: SafeString

    @property
    def url(self) -> str:
        return line_url(self.channel_id, self.id)


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    next_cursor: Cursor | None


def line_url(channel_id: int, message_id: int) -> str:
    """The chat page scrolled to one line, with the lines around it."""
    return f"/chat/{channel_id}/?around={message_id}"


def strip_formatting(text: str) -> str:
    """The line as plain text: mIRC bold, colours and other control characters removed."""
    return _FORMATTING.sub("", text)


def normalize_query(query: str) -> str:
    """The query as it is searched for; raises SearchQueryError when there is nothing to search."""
    query = " ".join(query.replace("\x00", " ").split())
    if not query:
        raise SearchQueryError("Type a word or two to search for.")
    if len(query) > MAX_QUERY_LENGTH:
        raise SearchQueryError(f"Keep the search under {MAX_QUERY_LENGTH} characters.")
    return query


def _query_facts(query: str) -> tuple[bool, float]:
    """Whether the query has anything to search for, and about how many lines there are."""
    # websearch_to_tsquery never rejects input, but punctuation alone becomes an empty query
    # that matches nothing: say so instead of showing "no results". reltuples is the planner's
    # line count (-1 before the first ANALYZE).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT numnode(websearch_to_tsquery('simple', %s)) > 0, "
            "(SELECT reltuples FROM pg_class WHERE oid = %s::regclass)",
            [query, Message._meta.db_table],
        )
        row = cursor.fetchone()
    assert row is not None
    return bool(row[0]), float(row[1] or 0)


def search_query(query: str) -> SearchQuery:
    return SearchQuery(query, config="simple", search_type="websearch")


def matching_messages(
    query: str,
    *,
    channel_id: int | None = None,
    nick: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[Message]:
    """Lines matching a normalised query and the filters, newest first (no limit)."""
    messages = (
        Message.objects.annotate(search=SEARCH_VECTOR)
        .filter(search=search_query(query), kind__in=SEARCHABLE_KINDS)
        .order_by("-server_time", "-id")
    )
    if channel_id is not None:
        messages = messages.filter(channel_id=channel_id)
    if nick:
        messages = messages.filter(sender__iexact=nick)
    if since is not None:
        messages = messages.filter(server_time__gte=since)
    if until is not None:
        messages = messages.filter(server_time__lt=until)
    return messages


# Finding a page of the newest matches takes one of two ways; which is cheaper depends on how many
# lines match, and PostgreSQL's planner misjudges it: it prices to_tsvector() at a fraction of
# what it costs, so for a word in ~0.5% of lines it walks the time index recomputing the vector
# of some 10,000 lines (and, in parallel, many more) where the index would have been 30x faster.
# Measured here (benchmarks/history.py), per line:
GIN_US_PER_MATCH = 2.0  # index: fetch and sort every match
SCAN_US_PER_LINE = 6.0  # walk newest first: to_tsvector() of every line passed
MIN_INDEX_MATCHES = 5_000
# How long walking may take before it is given up for the index, at the least: never less than
# twice what the index way is expected to cost, or giving up would make it worse.
WALK_TIMEOUT_MS = 100


def walk_timeout_ms(matches: float) -> int:
    return max(WALK_TIMEOUT_MS, round(2 * GIN_US_PER_MATCH * matches / 1000))


def index_threshold(lines: float, limit: int) -> float:
    """Up to how many matches the index way is the cheaper one: fetching M matches costs
    GIN * M, walking costs about SCAN * limit * lines / M; they meet at the square root."""
    lines = max(lines, 0.0)  # -1: never analysed
    return max(MIN_INDEX_MATCHES, (SCAN_US_PER_LINE / GIN_US_PER_MATCH * limit * lines) ** 0.5)


def estimated_matches(query: str) -> float:
    """The planner's estimate of the lines matching the words alone (it keeps the frequency of
    the commonest words from ANALYZE, so it is close where it matters)."""
    matching = Message.objects.annotate(search=SEARCH_VECTOR).filter(search=search_query(query))
    plan = json.loads(matching.order_by().values("id").explain(format="json"))
    return float(plan[0]["Plan"]["Plan Rows"])


def page_keys_sql(
    messages: QuerySet[Message], limit: int, *, use_index: bool
) -> tuple[str, tuple[Any, ...]]:
    """The SQL for (id, server_time) of the first `limit` of `messages` (newest first): walking
    an ordered index (the planner's choice), or every match through message_search first."""
    keys = messages.values_list("id", "server_time")
    if not use_index:
        return keys[:limit].query.sql_with_params()
    # MATERIALIZED: the planner cannot push the ORDER BY ... LIMIT in and walk instead.
    # (The inner SQL is Django's own, with its values as parameters.)
    sql, params = keys.order_by().query.sql_with_params()
    return (
        f"WITH hits AS MATERIALIZED ({sql}) "
        "SELECT id, server_time FROM hits ORDER BY server_time DESC, id DESC LIMIT %s",
        (*params, limit),
    )


def page_keys(
    messages: QuerySet[Message],
    limit: int,
    *,
    use_index: bool,
    walk_timeout_ms: int = WALK_TIMEOUT_MS,
) -> list[tuple[int, datetime]]:
    """(id, server_time) of the first `limit` of `messages` (ordered newest first).

    A walk that runs past `walk_timeout_ms` (the matches are rarer among the newest lines than
    the estimate said, or a nick filter thins them out) is given up for the index way.
    """
    nested = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        # In parallel, a walk's workers run thousands of lines past the page before it stops.
        # SET LOCAL ends with the transaction; inside a caller's, the old values are put back.
        cursor.execute(
            "SELECT current_setting('max_parallel_workers_per_gather'), "
            "current_setting('statement_timeout'), "
            "set_config('max_parallel_workers_per_gather', '0', true)"
        )
        saved = cursor.fetchone()
        try:
            if not use_index:
                walked = _walk(cursor, messages, limit, walk_timeout_ms)
                if walked is not None:
                    return walked
            sql, params = page_keys_sql(messages, limit, use_index=True)
            cursor.execute(sql, params)
            return [(message_id, server_time) for message_id, server_time in cursor.fetchall()]
        finally:
            if nested and saved is not None:
                cursor.execute(
                    "SELECT set_config('max_parallel_workers_per_gather', %s, true), "
                    "set_config('statement_timeout', %s, true)",
                    [saved[0], saved[1]],
                )


def _walk(
    cursor: Any, messages: QuerySet[Message], limit: int, timeout_ms: int
) -> list[tuple[int, datetime]] | None:
    sql, params = page_keys_sql(messages, limit, use_index=False)
    try:
        with transaction.atomic():  # a savepoint: a cancelled walk leaves the transaction usable
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{timeout_ms}ms"])
            cursor.execute(sql, params)
            return [(message_id, server_time) for message_id, server_time in cursor.fetchall()]
    except OperationalError as exc:
        if not isinstance(exc.__cause__, QueryCanceled):
            raise
        logger.info("search: walking took over %d ms; going through the index", timeout_ms)
        return None


def search_messages(
    query: str,
    *,
    channel_id: int | None = None,
    nick: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    before: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> SearchPage:
    """One page of the active account's lines matching `query` (web-search syntax: "a phrase",
    -excluded, this OR that), newest first, from `before` on. `until` is exclusive.

    Raises SearchQueryError for a query with nothing to search for.
    """
    if is_public():
        raise NoTenantError("search")  # before any SQL: the table exists only in accounts
    query = normalize_query(query)
    searchable, lines = _query_facts(query)
    if not searchable:
        raise SearchQueryError("Search for words or numbers; punctuation alone finds nothing.")
    messages = matching_messages(query, channel_id=channel_id, nick=nick, since=since, until=until)
    if before is not None:
        # The redundant `<=` bounds the scan of either index; the OR picks the exact keyset.
        messages = messages.filter(server_time__lte=before.server_time).filter(
            Q(server_time__lt=before.server_time) | Q(id__lt=before.id)
        )
    # Only ids and times first: the headline is costly, so it is made for this page's lines only.
    matches = estimated_matches(query)  # of the words alone: what the index way would fetch
    page = page_keys(
        messages,
        limit + 1,
        use_index=matches <= index_threshold(lines, limit + 1),
        walk_timeout_ms=walk_timeout_ms(matches),
    )
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        next_cursor = Cursor(server_time=page[-1][1], id=page[-1][0])
    ids = [message_id for message_id, _ in page]
    # Plain rows, not model instances: building those costs more than the query.
    rows = {
        row["id"]: row
        for row in Message.objects.filter(id__in=ids)
        .annotate(
            headline=SearchHeadline(
                Func(F("text"), Value(_HEADLINE_FROM), Value(_HEADLINE_TO), function="translate"),
                search_query(query),
                config="simple",
                start_sel=START_MARK,
                stop_sel=STOP_MARK,
                # A whole IRC line fits (as said, punctuation included); a long paste shows
                # some 30 to 60 words around the matches. MaxFragments would drop the
                # punctuation at the ends of each fragment.
                min_words=30,
                max_words=60,
            )
        )
        .values(*HIT_FIELDS, "headline")
    }
    hits = [
        SearchHit(
            id=row["id"],
            channel_id=row["channel_id"],
            channel_name=row["channel__name"],
            channel_kind=row["channel__kind"],
            server_name=row["channel__server__name"],
            kind=row["kind"],
            sender=row["sender"],
            text=row["text"],
            server_time=row["server_time"],
            snippet=render_snippet(row["headline"]),
        )
        for message_id in ids
        if (row := rows.get(message_id)) is not None  # pruned in between
    ]
    return SearchPage(hits=hits, next_cursor=next_cursor)


def render_snippet(headline: str) -> SafeString:
    """ts_headline output as HTML: formatting stripped, everything escaped, markers as <mark>."""
    parts: list[str] = []
    open_mark = False
    for piece in _MARK_SPLIT.split(strip_formatting(headline)):
        if piece == START_MARK:
            if not open_mark:
                parts.append("<mark>")
                open_mark = True
        elif piece == STOP_MARK:
            if open_mark:
                parts.append("</mark>")
                open_mark = False
        elif piece:
            parts.append(str(escape(piece.translate(_STAND_INS_BACK))))
    if open_mark:
        parts.append("</mark>")
    # Safe: every piece of the line went through escape(); only our own tags are added.
    return mark_safe("".join(parts))  # noqa: S308
