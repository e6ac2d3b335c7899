"""Benchmark: a knowledge base of the Python 3.11 documentation, ingested, searched and judged.

    .venv/bin/python benchmarks/knowledge_bases.py [--corpus DIR] [--workers W] [--rounds R]
        [--pages N] [--match-budget B] [--jit server|on|off] [--profile] [--redis-db K]
        [--database NAME] [--keep | --reuse]

(Not knowledge.py, the issue's name for it: run as a script, that would shadow the `knowledge`
package, as agents.py would `agents`: see benchmarks/agent_runs.py.)

The corpus is the Python 3.11 documentation as Debian's `python3.11-doc` installs it
(/usr/share/doc/python3.11/html, 530 HTML pages, 50 MB): a real documentation set no one here
wrote. `scripts/ensure_pydoc.sh` installs it; without it the benchmark stops and says so. It is
never copied into the repository.

In a database of its own (`palaver_bench_kb`, recreated, dropped at the end unless --keep) it
provisions one account with one English knowledge base and ingests every page as the product
does an upload: knowledge.services.add_document with the file's bytes (limits checked, the file
kept, the indexing task queued on commit: to a Redis database of the benchmark's, --redis-db,
emptied at the end, where no worker runs it), then knowledge.services.index_document_now, the
body of that task (extract, chunk, embed when the knowledge base has a model, which it has not
here, store the passages with their full-text vectors, mark the document ready). Two of the
pages are over the default LIMIT_DOCUMENT_BYTES (1 MiB: contents.html 2.5 MB, genindex-all.html
1.7 MB), so the benchmark runs with the operator setting at 4 MiB unless the environment sets
it. W processes (default 2) ingest in parallel, as the default Celery worker does
(`--concurrency 2`, one document per task); the largest pages go first so that one big page
does not finish alone at the end. Then VACUUM ANALYZE, as autovacuum does soon after a bulk
insert (statistics, and the GIN index's pending list merged).

Retrieval: each question of benchmarks/data/knowledge_questions.json (written for this
benchmark, each with the page or pages that answer it) goes through knowledge.retrieval.retrieve
over the knowledge base, top 5, R rounds (default 5) after one warm-up round, timed one by one.
Quality, from the first round: recall@5 is the share of questions with at least one of the 5
passages from an expected page; MRR is the mean of 1/rank of the first such passage (0 when
none is in the 5).

stdout gets exactly one line:
    pages=… failed=… chunks=… workers=… ingest_s=… pages_per_s=… chunks_per_s=…
    retrieve_ms_p50=… retrieve_ms_p99=… questions=… recall_at_5=… mrr=… match_budget=… jit=…
match_budget is knowledge.selectors.MATCH_BUDGET_ROWS (--match-budget overrides it), jit the
searches' JIT setting (--jit forces it). Targets: ingest_s < 120, retrieve_ms_p99 < 50,
recall_at_5 >= 0.8. The questions missed, the plan of the slowest search (EXPLAIN ANALYZE,
with PostgreSQL's JIT on and off) and, with --profile, a cProfile of ingestion in one process
go to stderr.
"""

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    run_in_scratch_database,
)

DEFAULT_DATABASE = "palaver_bench_kb"
DEFAULT_CORPUS = Path("/usr/share/doc/python3.11/html")
QUESTIONS = PROJECT_DIR / "benchmarks" / "data" / "knowledge_questions.json"
ACCOUNT_NAME = "Knowledge benchmark"
KB_NAME = "Python 3.11 documentation"
TOP = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help=f"default {DEFAULT_CORPUS}"
    )
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument(
        "--workers", type=int, default=2, help="ingesting processes (default 2, as the worker)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed rounds over the questions (default 5)"
    )
    parser.add_argument(
        "--pages",
        type=int,
        default=0,
        help="ingest only the N smallest pages, a quick check (default: all)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile ingestion (cProfile, one process) and print the top functions to stderr",
    )
    parser.add_argument(
        "--match-budget",
        type=int,
        default=0,
        help="override knowledge.selectors.MATCH_BUDGET_ROWS, to measure the trade (default: keep)",
    )
    parser.add_argument(
        "--jit",
        choices=["server", "on", "off"],
        default="server",
        help="PostgreSQL's JIT for the searches: the server's setting (default), or forced",
    )
    parser.add_argument(
        "--redis-db",
        type=int,
        default=9,
        help="Redis database the indexing tasks are queued to, emptied at the end (default 9)",
    )
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="search the database a --keep run left, without ingesting again (implies --keep)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.rounds < 1 or args.pages < 0:
        parser.error("need workers >= 1, rounds >= 1 and pages >= 0")
    if args.profile:
        args.workers = 1
    args.keep = args.keep or args.reuse
    return args


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def corpus_pages(root: Path) -> list[str]:
    """The corpus's HTML pages, relative to its root, largest first."""
    if not (root / "library" / "os.html").is_file():
        raise BenchmarkError(
            f"the corpus is missing: {root} has no library/os.html. Install Debian's "
            "python3.11-doc (scripts/ensure_pydoc.sh does, as root) or pass --corpus DIR"
        )
    pages = [
        path
        for path in root.rglob("*.html")
        if path.is_file() and not path.relative_to(root).parts[0].startswith("_")
    ]
    pages.sort(key=lambda path: (-path.stat().st_size, str(path)))
    return [str(path.relative_to(root)) for path in pages]


def load_questions(path: Path, root: Path) -> list[dict[str, Any]]:
    questions: list[dict[str, Any]] = json.loads(path.read_text())["questions"]
    for question in questions:
        for page in question["pages"]:
            if not (root / page).is_file():
                raise BenchmarkError(f"{path.name}: {page} is not a page of the corpus")
    if len(questions) < 50:
        raise BenchmarkError(f"{path.name} has {len(questions)} questions; at least 50 expected")
    return questions


# --- ingestion ---------------------------------------------------------------------------------

# Set in each ingesting process (_start_worker) or, with one worker, in the benchmark's own.
_worker: dict[str, Any] = {}


def _start_worker(account_id: Any, kb_id: int, root: str) -> None:
    from django.db import connection

    from accounts.models import Account
    from knowledge.models import KnowledgeBase

    # The inherited connection was closed before the fork: this process opens its own.
    cast(Any, connection).set_tenant(Account.objects.get(pk=account_id))
    _worker.update(kb=KnowledgeBase.objects.get(pk=kb_id), root=Path(root))


def ingest_page(page: str) -> tuple[str, int, str]:
    """One page uploaded and indexed; (page, passages stored, failure reason)."""
    from knowledge.models import Document
    from knowledge.services import add_document, index_document_now

    data = (_worker["root"] / page).read_bytes()
    # As the upload form adds it: limits checked, the file kept as the document's original, the
    # indexing task queued on commit (to the benchmark's Redis database, where nothing runs it).
    document = add_document(
        knowledge_base=_worker["kb"],
        title=page,
        filename=page,
        data=data,
        content_type="text/html",
    )
    # What the worker's task does with it: extract, chunk, (embed: no model here), store.
    indexed = index_document_now(document_id=document.pk)
    if indexed is None:
        raise BenchmarkError(f"{page}: the document vanished while it was indexed")
    if indexed.status != Document.Status.INDEXED:
        return page, 0, indexed.error or indexed.status
    return page, indexed.chunk_count, ""


def ingest(args: argparse.Namespace, account: Any, kb: Any, pages: list[str]) -> float:
    """Every page ingested; the wall-clock seconds it took."""
    from django.db import connections

    started = time.perf_counter()
    done = 0
    failures: list[tuple[str, str]] = []
    if args.workers == 1:
        _start_worker(account.pk, kb.pk, str(args.corpus))
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        results = [ingest_page(page) for page in pages]
        if profiler is not None:
            profiler.disable()
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(25)
    else:
        # Forked children must not share the parent's connection.
        connections.close_all()
        context = multiprocessing.get_context("fork")
        with context.Pool(
            args.workers,
            initializer=_start_worker,
            initargs=(account.pk, kb.pk, str(args.corpus)),
        ) as pool:
            results = []
            for result in pool.imap_unordered(ingest_page, pages, chunksize=1):
                results.append(result)
                done += 1
                if done % 100 == 0:
                    log(f"  {done}/{len(pages)} pages, {time.perf_counter() - started:.1f} s")
    elapsed = time.perf_counter() - started
    failures = [(page, reason) for page, _, reason in results if reason]
    for page, reason in failures:
        log(f"  failed: {page}: {reason}")
    return elapsed


# --- retrieval ---------------------------------------------------------------------------------


def explain_one(kb: Any, question: str) -> None:
    """EXPLAIN ANALYZE of the search statement for one question, JIT on then off."""
    from django.db import connection, transaction

    from knowledge import selectors

    words = None
    if not selectors.uses_syntax(question):
        words = selectors.words_queries(query=question, languages=[kb.language])
    log(f"words: {words}")
    sql, params = selectors.search_statement(
        query=question, kb_ids_by_language={kb.language: [kb.pk]}, limit=TOP, words=words
    )
    for jit in ("on", "off"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL jit = {jit}")
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        log(f"EXPLAIN ANALYZE, jit {jit}, {question!r}:\n{plan}")


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import Account
    from knowledge import selectors
    from knowledge.models import Chunk, Document, KnowledgeBase
    from knowledge.retrieval import retrieve
    from tenancy.services import provision_account

    if args.match_budget:
        from knowledge import selectors

        selectors.MATCH_BUDGET_ROWS = args.match_budget
    pages = corpus_pages(args.corpus)
    if args.pages:
        pages = pages[-args.pages :] if args.pages < len(pages) else pages
    questions = load_questions(args.questions, args.corpus)

    if args.reuse:
        account = Account.objects.get(name=ACCOUNT_NAME)
    else:
        log("migrating the public schema, provisioning the account")
        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
        back_to_public()
        account = provision_account(name=ACCOUNT_NAME)

    cast(Any, connection).set_tenant(account)  # django-tenants' connection
    if args.reuse:
        kb = KnowledgeBase.objects.get(name=KB_NAME)
        ingest_s = 0.0
    else:
        kb = KnowledgeBase.objects.create(name=KB_NAME, language=KnowledgeBase.Language.ENGLISH)
        log(f"ingesting {len(pages)} pages with {args.workers} process(es)")
        ingest_s = ingest(args, account, kb, pages)
        cast(Any, connection).set_tenant(account)  # the connection was closed for the fork
        with connection.cursor() as cursor:
            # What autovacuum does soon after a bulk insert: statistics, and the GIN index's
            # pending list merged (until then every search reads that list through).
            cursor.execute("VACUUM ANALYZE knowledge_chunk, knowledge_document")
    page_count = Document.objects.filter(knowledge_base=kb).count()
    failed = Document.objects.filter(knowledge_base=kb, status=Document.Status.FAILED).count()
    chunk_count = Chunk.objects.filter(document__knowledge_base=kb).count()
    path_of = dict(Document.objects.filter(knowledge_base=kb).values_list("pk", "filename"))
    log(f"{page_count} pages ({failed} failed), {chunk_count} passages, in {ingest_s:.1f} s")

    def ask(question: str) -> tuple[float, list[str]]:
        begin = time.perf_counter()
        hits = retrieve(query=question, knowledge_bases=[kb], limit=TOP)
        elapsed = (time.perf_counter() - begin) * 1000
        return elapsed, [path_of[hit.document_id] for hit in hits]

    with connection.cursor() as cursor:
        if args.jit != "server":
            cursor.execute(f"SET jit = {args.jit}")
        cursor.execute("SHOW jit")
        jit = cursor.fetchone()[0]
    for question in questions:  # warm-up: plans, caches, the connection
        ask(question["question"])
    samples: list[float] = []
    ranks: list[int | None] = []
    for round_number in range(args.rounds):
        for question in questions:
            elapsed, found = ask(question["question"])
            samples.append(elapsed)
            if round_number == 0:
                expected = set(question["pages"])
                ranks.append(next((i for i, p in enumerate(found, 1) if p in expected), None))
                if ranks[-1] is None:
                    log(f"  missed: {question['question']!r} -> {found} (wanted {expected})")
    recall = sum(rank is not None for rank in ranks) / len(ranks)
    mrr = sum(1 / rank for rank in ranks if rank is not None) / len(ranks)
    slowest = max(range(len(samples)), key=samples.__getitem__)
    log(
        f"retrieval: {len(samples)} searches, max {samples[slowest]:.1f} ms "
        f"({questions[slowest % len(questions)]['question']!r})"
    )
    explain_one(kb, questions[slowest % len(questions)]["question"])
    back_to_public()

    print(
        f"pages={page_count} failed={failed} chunks={chunk_count} workers={args.workers} "
        f"ingest_s={ingest_s:.1f} "
        f"pages_per_s={page_count / ingest_s if ingest_s else 0:.1f} "
        f"chunks_per_s={chunk_count / ingest_s if ingest_s else 0:.0f} "
        f"retrieve_ms_p50={statistics.median(samples):.2f} "
        f"retrieve_ms_p99={percentile(samples, 0.99):.2f} questions={len(questions)} "
        f"recall_at_5={recall:.3f} mrr={mrr:.3f} match_budget={selectors.MATCH_BUDGET_ROWS} "
        f"jit={jit}",
        file=result_out,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        corpus_pages(args.corpus)  # before any database work: say what is missing
    except BenchmarkError as error:
        log(f"knowledge benchmark: {error}")
        return 1
    from config.env import setting

    redis_url = setting("REDIS_URL", default="")
    if not redis_url:
        log("REDIS_URL is not set: the benchmark needs a Redis server it may queue tasks to")
        return 1
    # The indexing tasks add_document queues go to a database of the benchmark's, never the
    # development broker's (no worker takes them there; the benchmark indexes itself).
    os.environ["REDIS_URL"] = urlunsplit(urlsplit(redis_url)._replace(path=f"/{args.redis_db}"))
    os.environ.setdefault("LIMIT_DOCUMENT_BYTES", str(4 * 1024 * 1024))
    try:
        return run_in_scratch_database(
            args, title="knowledge benchmark", run=run, recreate=not args.reuse
        )
    finally:
        import redis

        redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")


if __name__ == "__main__":
    sys.exit(main())
