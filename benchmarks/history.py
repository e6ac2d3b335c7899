"""Benchmark: scrollback and full-text search over 1,000,000 stored lines in one account.

    .venv/bin/python benchmarks/history.py [--lines N] [--channels C] [--runs R] [--keep | --reuse]

Provisions one account in a database of its own (`palaver_bench_history` on the server
DATABASE_URL names, dropped and recreated at the start, dropped at the end unless --keep),
bulk-loads N lines (default 1,000,000) into its schema over C channels (default 20) with COPY,
with the message indexes built after the load exactly as the migrations define them, then
VACUUM ANALYZE. Lines are words drawn from a Zipf-distributed vocabulary (a few hundred common
English words, then made-up ones), said by a few dozen nicks, a couple of years of history, busy
and quiet channels. A rare word and a phrase are planted in known lines.

Then it times, R times each (default 50), interleaved:
- scrollback: the latest 100 lines of the busiest channel, and a page of 100 from halfway back
  by keyset (`channels_app.selectors.chat.history_page` when it exists, else the same ORM query);
- search (`channels_app.selectors.search.search_messages`, one page of 50 with snippets): a
  common word ("the", in about 70% of lines), a word of middling frequency ("review", about
  0.8%), the word nearest the point where search switches between its two ways (see
  channels_app/selectors/search.py), a rare word (30 lines), a phrase with a channel filter,
  and the switch-point word with a nick filter.

stdout gets exactly one line:
    scrollback_ms_p50=… scrollback_older_ms_p50=… search_ms_p50=… search_mid_ms_p50=…
    search_crossover_ms_p50=… search_rare_ms_p50=… search_phrase_ms_p50=… search_nick_ms_p50=…
    lines=… unaided_mid_ms_p50=…
search_ms_p50 is the common word. unaided_mid_ms_p50 is the anchor: the middling word's page as
PostgreSQL plans it unaided (5 runs). Query plans and the spread go to stderr.
"""

import argparse
import functools
import itertools
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

import psycopg  # noqa: E402
from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    p95,
    run_in_scratch_database,
    timed_ms,
)
from psycopg import sql  # noqa: E402

DEFAULT_DATABASE = "palaver_bench_history"
ACCOUNT_NAME = "History benchmark"
PAGE = 100  # scrollback page
SEED = 20261123

RARE_WORD = "quasar"  # planted in RARE_COUNT lines, in no other
RARE_COUNT = 30
PHRASE = "merge request"  # planted in about 0.2% of lines
PHRASE_SHARE = 0.002

_COMMON_WORDS = (
    "the i to a and you it is that of in for on this but not with be have was just so what "
    "my are if do at we can no yes ok like it's i'm don't get there all they your or one about "
    "know think now from out up how when then some would will here an more use why which "
    "good time need want see make work any also only still because really thing well go "
    "right people other way sure try should could new same did been something maybe thanks "
    "lol yeah hmm fine bug fix build test deploy server client code patch release version "
    "python rust linux debian kernel config file error log issue docs branch commit push pull "
    "merge request review ci ticket package install update upgrade network irc channel nick "
    "bot script shell vim emacs git ssh key password user admin host port socket thread "
    "memory disk cpu cache query index table schema database postgres redis queue worker "
    "job task api http json yaml url link page site web browser tab window screen mouse "
    "keyboard today tomorrow yesterday morning night week weekend coffee lunch home office "
    "meeting call later soon again never always often first last next back away around "
    "hello hi hey bye night morning welcome thank please sorry wait look read write talk"
)
COMMON = _COMMON_WORDS.split()
_SYLLABLES = "ka lo mi nu pe ra si to vu za bri cle dro fle gra kno pla sta tri qua"
SYLLABLES = _SYLLABLES.split()
_NAMES = "anna ben chloe dmitri emeka fatima goran hiro ines jonas kaito lena"
NICKS = [
    f"{name}{suffix}"
    for name, suffix in itertools.product(
        _NAMES.split(),
        ["", "_", "42", "|away"],
    )
][:40]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines to store")
    parser.add_argument("--channels", type=int, default=20, help="channels to spread them over")
    parser.add_argument("--runs", type=int, default=50, help="timed runs of each query")
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="time against the database a --keep run left, without reloading it (implies --keep)",
    )
    args = parser.parse_args(argv)
    if args.lines < 10_000:
        parser.error("--lines must be at least 10,000")
    if not 2 <= args.channels <= 500:
        parser.error("--channels must be between 2 and 500")
    if args.runs < 2:
        parser.error("--runs must be at least 2 (percentiles need two samples)")
    args.keep = args.keep or args.reuse
    return args


# --- the data ----------------------------------------------------------------------------------


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    words = list(dict.fromkeys(COMMON))
    seen = set(words) | {RARE_WORD}
    while len(words) < size:
        word = "".join(rng.choices(SYLLABLES, k=rng.choice((2, 2, 3, 3, 4))))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def zipf_cumulative(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1 / (rank**s) for rank in range(1, n + 1)))


def copy_lines(
    conn: psycopg.Connection[Any], schema: str, channel_ids: list[int], n: int, rng: random.Random
) -> dict[str, Any]:
    """COPY n lines into the schema's message table; return what was planted where."""
    words = vocabulary(rng)
    word_weights = zipf_cumulative(len(words), 1.07)
    channel_weights = zipf_cumulative(len(channel_ids), 1.0)
    nick_weights = zipf_cumulative(len(NICKS), 0.9)
    rare_lines = set(rng.sample(range(n), RARE_COUNT))
    start = datetime.now(UTC) - timedelta(days=730)
    step = timedelta(days=729) / n
    phrase_channel_counts: dict[int, int] = {}
    table = sql.Identifier(schema, "channels_app_message")
    copy_sql = sql.SQL(
        "COPY {} (channel_id, kind, sender, text, server_time, msgid, tags, created_at) FROM STDIN"
    ).format(table)
    batch: list[str] = []
    with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
        for i in range(n):
            channel_id = rng.choices(channel_ids, cum_weights=channel_weights)[0]
            sender = rng.choices(NICKS, cum_weights=nick_weights)[0]
            # Jitter within the step keeps times increasing with ids, as the gateway stores them.
            at = (start + step * i + step * rng.random() * 0.5).isoformat()
            roll = rng.random()
            if roll < 0.04 and i not in rare_lines:
                kind, text = rng.choice(("join", "part", "quit")), ""
            else:
                kind = "action" if roll < 0.07 else "message"
                tokens = rng.choices(words, cum_weights=word_weights, k=rng.randint(3, 18))
                if i in rare_lines:
                    tokens.insert(rng.randrange(len(tokens) + 1), RARE_WORD)
                if rng.random() < PHRASE_SHARE:
                    tokens.insert(rng.randrange(len(tokens) + 1), PHRASE)
                    phrase_channel_counts[channel_id] = phrase_channel_counts.get(channel_id, 0) + 1
                text = " ".join(tokens)
                if rng.random() < 0.3:
                    text = f"{rng.choices(NICKS, cum_weights=nick_weights)[0]}: {text}"
            batch.append(f"{channel_id}\t{kind}\t{sender}\t{text}\t{at}\t\t{{}}\t{at}\n")
            if len(batch) == 10_000:
                copy.write("".join(batch))
                batch.clear()
                if i % 100_000 < 10_000:
                    log(f"  {i + 1:,} lines")
        if batch:
            copy.write("".join(batch))
    return {"phrase_channel_counts": phrase_channel_counts, "words": words}


def load(args: argparse.Namespace, bench_url: str, schema: str) -> None:
    from django.db import connection

    from channels_app.models import Channel, Server

    rng = random.Random(SEED)
    servers = [
        Server.objects.create(name="Libera", host="irc.libera.chat", nick="bench"),
        Server.objects.create(name="OFTC", host="irc.oftc.net", nick="bench"),
    ]
    channel_ids = [
        Channel.objects.create(server=servers[i % 2], name=f"#channel{i:02d}").pk
        for i in range(args.channels)
    ]
    connection.close()  # nothing of Django's holds a lock on the table while it is loaded

    with psycopg.connect(bench_url) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
            "AND tablename = 'channels_app_message' AND indexname NOT LIKE '%%_pkey'",
            [schema],
        ).fetchall()
        for name, _ in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
        log(f"loading {args.lines:,} lines with COPY (indexes dropped: {len(indexes)})")
        started = time.perf_counter()
        copy_lines(conn, schema, channel_ids, args.lines, rng)
        conn.commit()
        log(f"loaded in {time.perf_counter() - started:.0f} s; building the indexes")
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for name, definition in indexes:
            conn.execute(definition)
            conn.commit()
            log(f"  {name}: {time.perf_counter() - started:.0f} s")
    with psycopg.connect(bench_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "channels_app_message"))
        )


# --- the timed part ----------------------------------------------------------------------------


def scrollback_function() -> Callable[..., list[Any]]:
    """history_page from the chat's selectors when it is there; else the query it runs."""
    from channels_app.models import Channel, Message

    history_page: Callable[..., Any] | None
    try:
        from channels_app.selectors.chat import history_page
    except ImportError:  # a checkout from before the selector
        history_page = None

    def orm_page(channel: Channel, before_id: int | None = None) -> list[Any]:
        messages = Message.objects.filter(channel=channel)
        if before_id is not None:
            anchor = Message.objects.filter(channel=channel, pk=before_id).values_list(
                "server_time", flat=True
            )[0]
            messages = messages.filter(server_time__lte=anchor).exclude(
                server_time=anchor, pk__gte=before_id
            )
        return list(reversed(messages.order_by("-server_time", "-id")[:PAGE]))

    if history_page is None:
        log("scrollback: channels_app.selectors.chat.history_page not found; timing the ORM query")
        return orm_page

    def selector_page(channel: Channel, before_id: int | None = None) -> list[Any]:
        return list(history_page(channel, before_id=before_id, limit=PAGE).messages)

    log("scrollback: timing channels_app.selectors.chat.history_page")
    return selector_page


def explain(sql_text: str, params: Any) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET max_parallel_workers_per_gather = 0")  # as page_keys runs it
        cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {sql_text}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET max_parallel_workers_per_gather")
    return plan


def crossover_word(schema: str, lines: float, threshold: float) -> tuple[str, float]:
    """The word whose frequency (from ANALYZE's most common lexemes) is nearest the point where
    search switches from the index to walking: the slowest kind of word to search for."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats "
            "WHERE schemaname = %s AND tablename = 'message_search'",
            [schema],
        )
        row = cursor.fetchone()
    if row is None:
        raise BenchmarkError("no statistics for the message_search index")
    words, freqs = row
    candidates = [(w, f * lines) for w, f in zip(words, freqs, strict=False) if w.isalpha()]
    return min(candidates, key=lambda c: abs(c[1] - threshold))


def run(args: argparse.Namespace, bench_url: str, result_out: Any) -> None:
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Count

    from accounts.models import Account
    from channels_app.models import Channel, Message
    from channels_app.selectors.search import (
        PAGE_SIZE,
        estimated_matches,
        index_threshold,
        matching_messages,
        page_keys,
        page_keys_sql,
        search_messages,
    )
    from tenancy import switch
    from tenancy.services import provision_account

    if args.reuse:
        account = Account.objects.get(name=ACCOUNT_NAME)
    else:
        log("migrating the public schema, provisioning the account")
        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
        back_to_public()
        account = provision_account(name=ACCOUNT_NAME)

    with switch(account):
        if not args.reuse:
            load(args, bench_url, account.schema_name)
        lines = Message.objects.count()
        log(f"{lines:,} lines in the account")
        if not args.reuse and lines != args.lines:
            raise BenchmarkError(f"expected {args.lines} lines, found {lines}")

        by_size = list(
            Message.objects.values_list("channel", flat=True)
            .order_by()
            .annotate(n=Count("id"))
            .order_by("-n")
        )
        busiest = Channel.objects.get(pk=by_size[0])
        in_busiest = Message.objects.filter(channel=busiest).count()
        halfway_id = (
            Message.objects.filter(channel=busiest)
            .order_by("-server_time", "-id")
            .values_list("id", flat=True)[in_busiest // 2]
        )
        # The phrase, in a channel of middling size (about a tenth of the lines).
        phrase_channel = by_size[2]
        page_of = scrollback_function()

        reltuples = float(lines)
        threshold = index_threshold(reltuples, PAGE_SIZE + 1)
        worst, worst_count = crossover_word(account.schema_name, reltuples, threshold)
        log(f"index up to ~{threshold:,.0f} matches; nearest word: {worst!r} (~{worst_count:,.0f})")
        searches: dict[str, dict[str, Any]] = {
            "common": {"query": "the"},
            "mid": {"query": "review"},
            "crossover": {"query": worst},
            "rare": {"query": RARE_WORD},
            "phrase": {"query": f'"{PHRASE}"', "channel_id": phrase_channel},
            # The crossover word said by a quiet nick: walking finds few, the timeout decides.
            "nick": {"query": worst, "nick": NICKS[-1].upper()},
        }
        for name, kwargs in searches.items():
            estimate = estimated_matches(kwargs["query"])
            use_index = estimate <= threshold
            sql_text, params = page_keys_sql(
                matching_messages(**kwargs), PAGE_SIZE + 1, use_index=use_index
            )
            log(
                f"search {name} {kwargs}: ~{estimate:,.0f} matches estimated, "
                f"{'index' if use_index else 'walk'}:\n{explain(sql_text, params)}"
            )
            if name == "rare" and "Bitmap Index Scan on message_search" not in explain(
                sql_text, params
            ):
                raise BenchmarkError("the rare word's search does not use message_search")

        # Check the work before timing it.
        latest = page_of(busiest)
        older = page_of(busiest, before_id=halfway_id)
        if len(latest) != PAGE or len(older) != PAGE:
            raise BenchmarkError(f"scrollback pages of {len(latest)} and {len(older)} lines")
        if not all(m.id < halfway_id or m.server_time < older[-1].server_time for m in older):
            raise BenchmarkError("the older page is not older than its anchor")
        rare = search_messages(RARE_WORD)
        if len(rare.hits) != RARE_COUNT or rare.next_cursor is not None:
            raise BenchmarkError(f"rare word found in {len(rare.hits)} lines, not {RARE_COUNT}")
        if not all("<mark>quasar</mark>" in hit.snippet for hit in rare.hits):
            raise BenchmarkError("a rare-word hit has no marked snippet")
        for name, kwargs in searches.items():
            if len(search_messages(**kwargs).hits) == 0:
                raise BenchmarkError(f"search {name} found nothing")

        # Both ways for the crossover word, whichever search_messages picks: near the
        # threshold they should cost about the same (GIN_US_PER_MATCH and SCAN_US_PER_LINE).
        crossover = matching_messages(worst)
        ways = {"index": True, "walk": False}
        way_ms: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(10):
            for way, use_index in ways.items():
                way_ms[way].append(
                    timed_ms(
                        functools.partial(
                            page_keys,
                            crossover,
                            PAGE_SIZE + 1,
                            use_index=use_index,
                            walk_timeout_ms=60_000,
                        )
                    )
                )
        log(
            f"crossover word {worst!r}, page of ids only: "
            + ", ".join(f"{way} {statistics.median(ms):.1f} ms" for way, ms in way_ms.items())
        )

        # The anchor: the mid word's page as PostgreSQL plans it unaided (one ORDER BY ... LIMIT
        # query, parallel workers allowed), which is what search did before choosing the way.
        unaided = matching_messages("review").values_list("id", "server_time")[: PAGE_SIZE + 1]
        unaided_ms = [timed_ms(lambda: list(unaided.all())) for _ in range(5)]

        timings: dict[str, list[float]] = {
            "scrollback": [],
            "scrollback_older": [],
            **{f"search_{name}": [] for name in searches},
        }
        calls: dict[str, Callable[[], object]] = {
            "scrollback": lambda: page_of(busiest),
            "scrollback_older": lambda: page_of(busiest, before_id=halfway_id),
            **{
                f"search_{name}": functools.partial(search_messages, **kwargs)
                for name, kwargs in searches.items()
            },
        }
        for call in calls.values():  # warm: plans cached, pages in memory
            call()
        order = list(calls)
        for run_number in range(args.runs):
            # Rotate the order so none always runs first or right after another.
            shift = run_number % len(order)
            for name in order[shift:] + order[:shift]:
                timings[name].append(timed_ms(calls[name]))
    connection.close()

    for name, samples in timings.items():
        log(
            f"{name}: p50 {statistics.median(samples):.2f} ms, p95 {p95(samples):.2f} ms, "
            f"min {min(samples):.2f}, max {max(samples):.2f}"
        )
    fields = [
        f"scrollback_ms_p50={statistics.median(timings['scrollback']):.2f}",
        f"scrollback_older_ms_p50={statistics.median(timings['scrollback_older']):.2f}",
        f"search_ms_p50={statistics.median(timings['search_common']):.2f}",
        f"search_mid_ms_p50={statistics.median(timings['search_mid']):.2f}",
        f"search_crossover_ms_p50={statistics.median(timings['search_crossover']):.2f}",
        f"search_rare_ms_p50={statistics.median(timings['search_rare']):.2f}",
        f"search_phrase_ms_p50={statistics.median(timings['search_phrase']):.2f}",
        f"search_nick_ms_p50={statistics.median(timings['search_nick']):.2f}",
        f"lines={lines}",
        f"unaided_mid_ms_p50={statistics.median(unaided_ms):.2f}",
    ]
    print(" ".join(fields), file=result_out, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_scratch_database(
        args, title="history benchmark", run=run, recreate=not args.reuse
    )


if __name__ == "__main__":
    sys.exit(main())
