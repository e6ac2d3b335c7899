"""Chunks and full-text retrieval over them (knowledge.services.replace_chunks,
knowledge.selectors.search_chunks)."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection

from accounts.models import User
from knowledge.chunking import ChunkText
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.selectors import (
    WordsQuery,
    _tsquery_literal,
    search_chunks,
    uses_syntax,
    words_queries,
)
from knowledge.services import replace_chunks
from knowledge.types import ChunkHit, HeadlineSegment
from tenancy import NoTenantError, switch


def chunk(ordinal: int, text: str, *headings: str, page: int | None = None) -> ChunkText:
    return ChunkText(
        text=text, heading_path=headings, page=page, tokens=len(text.split()), ordinal=ordinal
    )


def make_kb(name: str = "", language: str = "english") -> KnowledgeBase:
    name = name or f"Handbook {KnowledgeBase.objects.count() + 1}"
    return KnowledgeBase.objects.create(name=name, language=language)


def make_document(knowledge_base: KnowledgeBase | None = None, title: str = "Page") -> Document:
    return Document.objects.create(
        knowledge_base=knowledge_base or make_kb(),
        title=title,
        source=Document.Source.PASTED,
        text="The document's text, chunked by the tests themselves.",
    )


def texts(hits: list[ChunkHit]) -> list[str]:
    return [hit.text for hit in hits]


# --- storing -----------------------------------------------------------------------------------


def test_replace_chunks_stores_them_with_their_vectors(alice: User) -> None:
    with switch(alice):
        document = make_document()
        stored = replace_chunks(
            document=document,
            chunks=[
                chunk(0, "Install the package first.", "Guide", "Setup", page=1),
                chunk(1, "Then run the server.", "Guide", "Running", page=2),
            ],
        )
        assert stored == 2
        rows = list(
            Chunk.objects.filter(document=document).values_list(
                "ordinal", "text", "heading_path", "page", "tokens"
            )
        )
        assert rows == [
            (0, "Install the package first.", ["Guide", "Setup"], 1, 4),
            (1, "Then run the server.", ["Guide", "Running"], 2, 4),
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT search_vector::text FROM knowledge_chunk WHERE document_id = %s "
                "ORDER BY ordinal",
                [document.pk],
            )
            vectors = [row[0] for row in cursor.fetchall()]
        # English stems, the heading path weighted A, the text B.
        assert vectors[0] == "'first':6B 'guid':1A 'instal':3B 'packag':5B 'setup':2A"
        assert "'run':2A,4B" in vectors[1], vectors[1]


def test_replace_chunks_replaces_the_old_ones(alice: User) -> None:
    with switch(alice):
        document = make_document()
        other = make_document(knowledge_base=document.knowledge_base)
        replace_chunks(document=other, chunks=[chunk(0, "Someone else's words.")])
        replace_chunks(document=document, chunks=[chunk(i, f"old {i}") for i in range(3)])
        assert replace_chunks(document=document, chunks=[chunk(0, "new text")]) == 1
        assert list(document.chunks.values_list("text", flat=True)) == ["new text"]
        assert list(other.chunks.values_list("text", flat=True)) == ["Someone else's words."]
        assert replace_chunks(document=document, chunks=[]) == 0
        assert not document.chunks.exists()
        assert other.chunks.count() == 1


def test_a_failed_replacement_keeps_the_old_chunks(alice: User) -> None:
    with switch(alice):
        document = make_document()
        replace_chunks(document=document, chunks=[chunk(0, "kept one"), chunk(1, "kept two")])
        # Two chunks with one ordinal: the insert fails after the old chunks were deleted.
        with pytest.raises(IntegrityError):
            replace_chunks(document=document, chunks=[chunk(0, "new"), chunk(0, "clash")])
        assert list(document.chunks.values_list("text", flat=True)) == ["kept one", "kept two"]
        assert texts(search_chunks(query="kept")) == ["kept one", "kept two"]


def test_replace_chunks_of_a_deleted_document(alice: User) -> None:
    with switch(alice):
        document = make_document()
        Document.objects.filter(pk=document.pk).delete()
        with pytest.raises(Document.DoesNotExist):
            replace_chunks(document=document, chunks=[chunk(0, "orphan")])
        assert not Chunk.objects.exists()


def test_nul_characters_and_long_headings_do_not_fail_a_document(alice: User) -> None:
    with switch(alice):
        document = make_document()
        replace_chunks(document=document, chunks=[chunk(0, "a\x00b", "h" * 1000)])
        stored = Chunk.objects.get(document=document)
        assert stored.text == "ab"
        assert stored.heading_path == ["h" * 300]


def test_chunks_go_with_their_document(alice: User) -> None:
    with switch(alice):
        document = make_document()
        replace_chunks(document=document, chunks=[chunk(0, "gone soon")])
        document.knowledge_base.delete()
        assert not Chunk.objects.exists()


# --- the language ------------------------------------------------------------------------------


def test_language_defaults_to_english_and_is_validated(alice: User) -> None:
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Docs")
        assert kb.language == "english"
        kb.language = "klingon"
        with pytest.raises(ValidationError) as raised:
            kb.full_clean()
        assert "language" in raised.value.message_dict
        # The database refuses it too: it is cast to regconfig at every search.
        with pytest.raises(IntegrityError):
            KnowledgeBase.objects.filter(pk=kb.pk).update(language="klingon")


def test_every_language_is_a_postgresql_configuration(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT cfgname FROM pg_ts_config")
        configurations = {row[0] for row in cursor.fetchall()}
    assert set(KnowledgeBase.Language.values) <= configurations


def test_language_decides_how_words_match(alice: User) -> None:
    with switch(alice):
        english = make_kb(language="english")
        simple = make_kb(language="simple")
        for kb in (english, simple):
            replace_chunks(
                document=make_document(knowledge_base=kb),
                chunks=[chunk(0, f"The {kb.language} workers are running nightly.")],
            )
        # Stemmed in English: "run" finds "running"; the simple configuration matches words.
        assert texts(search_chunks(query="run")) == ["The english workers are running nightly."]
        assert len(search_chunks(query="running")) == 2
        # "the" is an English stop word, an ordinary word in simple.
        assert texts(search_chunks(query="the")) == ["The simple workers are running nightly."]


# --- searching ---------------------------------------------------------------------------------


@pytest.fixture
def handbook(alice: User) -> KnowledgeBase:
    with switch(alice):
        kb = make_kb(name="Handbook")
        replace_chunks(
            document=make_document(knowledge_base=kb, title="Operations"),
            chunks=[
                chunk(0, "Backups run every night and are kept a month.", "Ops", "Storage"),
                # The body match comes first: only the weights can put the heading match above.
                chunk(1, "Rollbacks: see the deploy log for the previous tag.", "Ops", "Incidents"),
                chunk(2, "Ship from the main branch with make release.", "Ops", "Deploying"),
                chunk(3, "Code: use <div class=x> & escape it.", "Ops", "Markup", page=7),
            ],
        )
        return kb


def test_heading_match_ranks_above_body_match(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        hits = search_chunks(query="deploy")
    assert [hit.heading_path for hit in hits] == [("Ops", "Deploying"), ("Ops", "Incidents")]
    assert hits[0].rank > hits[1].rank > 0


def test_hit_fields(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        document = Document.objects.get(title="Operations")
        (hit,) = search_chunks(query="escape")
        assert hit.chunk_id == Chunk.objects.get(document=document, ordinal=3).pk
    assert hit.document_id == document.pk
    assert hit.document_title == "Operations"
    assert hit.knowledge_base_id == handbook.pk
    assert hit.heading_path == ("Ops", "Markup")
    assert hit.page == 7
    assert hit.text == "Code: use <div class=x> & escape it."


def test_highlights_mark_matches_and_keep_text_as_text(
    alice: User, handbook: KnowledgeBase
) -> None:
    with switch(alice):
        (hit,) = search_chunks(query="escaping")
        (backups,) = search_chunks(query='"every night"')
    assert hit.headline == (
        HeadlineSegment("Code: use <div class=x> & ", marked=False),
        HeadlineSegment("escape", marked=True),
    )
    assert hit.headline_html == "Code: use &lt;div class=x&gt; &amp; <mark>escape</mark>"
    marked = [segment.text for segment in backups.headline if segment.marked]
    assert marked == ["every", "night"]


def test_web_search_syntax(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        assert len(search_chunks(query="deploy -rollbacks")) == 1
        assert len(search_chunks(query="backups OR markup")) == 2
        assert texts(search_chunks(query='"main branch"')) == [
            "Ship from the main branch with make release."
        ]


def test_a_question_finds_passages_with_some_of_its_words(
    alice: User, handbook: KnowledgeBase
) -> None:
    """Nobody writes every word of a question in the passage that answers it."""
    with switch(alice):
        hits = search_chunks(query="How long are the nightly backups kept?")
        assert hits[0].heading_path == ("Ops", "Storage")
        # Words in search syntax are all required, as before.
        assert search_chunks(query='"nightly backups" kept') == []


def test_a_question_weighs_what_a_passage_says_against_its_headings(alice: User) -> None:
    """Two of the question's words in a passage's text beat one in another's heading path (which
    every passage of that section repeats); with ts_rank's default weights (A 1.0, B 0.4) the
    heading would win."""
    with switch(alice):
        kb = make_kb()
        replace_chunks(
            document=make_document(knowledge_base=kb),
            chunks=[
                chunk(0, "See the storage page for the details.", "Ops", "Backup"),
                chunk(1, "Each backup is kept for a month.", "Ops", "Storage"),
            ],
        )
        hits = search_chunks(query="How long is a backup kept?")
        assert [hit.text for hit in hits] == [
            "Each backup is kept for a month.",
            "See the storage page for the details.",
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT text FROM knowledge_chunk ORDER BY "
                "ts_rank(search_vector, %s::tsquery) DESC LIMIT 1",
                ["'long' | 'backup' | 'kept'"],
            )
            assert cursor.fetchone() == ("See the storage page for the details.",)


@pytest.mark.parametrize(
    ("query", "syntax"),
    [
        ("how do I deploy", False),
        ("on-call pages", False),
        ("C++ or Rust", False),
        ("what is 3 - 2", False),
        ("run a module with python -m", False),
        ("what does --help print", False),
        ('"main branch"', True),
        ("deploy -rollbacks", True),
        ("-rollbacks", True),
        ("backups OR markup", True),
    ],
)
def test_question_or_search_syntax(query: str, syntax: bool) -> None:
    assert uses_syntax(query) is syntax


def test_lexemes_are_quoted_for_tsquery(db: None) -> None:
    """Whatever a lexeme holds (a quote, a backslash, operators, spaces), the tsquery made of
    them has exactly those lexemes: each matches itself in a vector."""
    lexemes = ["it's", "back\\slash", "plain", "a|b & !c"]
    literal = _tsquery_literal(lexemes)
    with connection.cursor() as cursor:
        for lexeme in lexemes:
            cursor.execute(
                "SELECT array_to_tsvector(%s::text[]) @@ %s::tsquery, "
                "array_to_tsvector(array['other']) @@ %s::tsquery",
                [[lexeme], literal, literal],
            )
            assert cursor.fetchone() == (True, False), lexeme
        cursor.execute("SELECT numnode(%s::tsquery)", [literal])
        assert cursor.fetchone() == (2 * len(lexemes) - 1,)  # n lexemes, n - 1 ORs


def test_common_words_do_not_make_every_passage_a_candidate(alice: User) -> None:
    """With the column's statistics, a question's words in more passages than the budget allows
    stop finding: the rare word alone finds, every word ranks."""
    from knowledge.selectors import MATCH_BUDGET_ROWS

    with switch(alice):
        kb = make_kb()
        count = MATCH_BUDGET_ROWS + 200
        for d in range(count // 100):
            replace_chunks(
                document=make_document(knowledge_base=kb),
                chunks=[
                    chunk(i, f"widget {'sprocket' if d == 0 and i < 3 else 'gear'} number{i}")
                    for i in range(100)
                ],
            )
        assert words_queries(query="widget sprocket", languages=["english"]) == {
            # No statistics yet: every word finds.
            "english": WordsQuery(match="'sprocket' | 'widget'", rank="'sprocket' | 'widget'")
        }
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE knowledge_chunk")
        assert words_queries(query="widget sprocket", languages=["english"]) == {
            "english": WordsQuery(match="'sprocket'", rank="'sprocket' | 'widget'")
        }
        hits = search_chunks(query="Which widget has a sprocket?")
        assert len(hits) == 3
        assert all("sprocket" in hit.text for hit in hits)
        marked = {segment.text for segment in hits[0].headline if segment.marked}
        assert marked == {"widget", "sprocket"}
        # A question of common words alone still finds (its rarest word does).
        assert len(search_chunks(query="widget gear")) == 10
        assert words_queries(query="the of and", languages=["english"]) == {}


@pytest.mark.parametrize(
    "query", ["", "   ", "the and of", "!!!", '"', "-", "OR", "((", "a\x00b", "&|!:*"]
)
def test_nothing_to_search_for_finds_nothing(
    alice: User, handbook: KnowledgeBase, query: str
) -> None:
    with switch(alice):
        assert search_chunks(query=query) == []


def test_malformed_syntax_never_errors(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        assert len(search_chunks(query='"deploy log')) == 1  # the quote never closed
        assert search_chunks(query='"deploy OR -(log') == []
        # tsquery operators are never syntax: the words around them are searched for.
        assert set(texts(search_chunks(query="deploy:* & !log | ("))) == {
            "Rollbacks: see the deploy log for the previous tag.",
            "Ship from the main branch with make release.",  # under "Deploying"
        }


def test_limit(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        document = make_document(knowledge_base=handbook)
        replace_chunks(
            document=document, chunks=[chunk(i, f"widget number {i}") for i in range(30)]
        )
        assert len(search_chunks(query="widget")) == 10
        assert len(search_chunks(query="widget", limit=3)) == 3
        assert search_chunks(query="widget", limit=0) == []


def test_knowledge_base_filter(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        french = make_kb(name="Manuel", language="french")
        replace_chunks(
            document=make_document(knowledge_base=french),
            chunks=[chunk(0, "Les sauvegardes : backups chaque nuit.")],
        )
        both = search_chunks(query="backups")
        assert {hit.knowledge_base_id for hit in both} == {handbook.pk, french.pk}
        assert {
            hit.knowledge_base_id
            for hit in search_chunks(query="backups", knowledge_bases=[french])
        } == {french.pk}
        only_handbook = search_chunks(query="backups", knowledge_bases=[handbook])
        assert [hit.knowledge_base_id for hit in only_handbook] == [handbook.pk]
        assert search_chunks(query="backups", knowledge_bases=[]) == []
        # French stemming for the French knowledge base, in the same search.
        assert texts(search_chunks(query="sauvegarde")) == [
            "Les sauvegardes : backups chaque nuit."
        ]


def test_accounts_never_see_each_others_chunks(alice: User, bob: User) -> None:
    for user in (alice, bob):
        with switch(user):
            kb = make_kb(name="Handbook")
            replace_chunks(
                document=make_document(knowledge_base=kb, title=f"{user.email}'s page"),
                chunks=[chunk(0, "The shared secret phrase.", "Secrets")],
            )
    for user in (alice, bob):
        with switch(user):
            hits = search_chunks(query="secret phrase")
            assert [hit.document_title for hit in hits] == [f"{user.email}'s page"]
            assert [hit.chunk_id for hit in hits] == list(
                Chunk.objects.values_list("pk", flat=True)
            )
            mine = KnowledgeBase.objects.get()
            assert len(search_chunks(query="secret", knowledge_bases=[mine])) == 1


def test_search_needs_an_account(db: None) -> None:
    with pytest.raises(NoTenantError):
        search_chunks(query="deploy")


def test_search_uses_the_gin_index(alice: User) -> None:
    """Over a few thousand chunks, with sequential scans off (at this size a scan is as cheap,
    and the planner rightly takes it), each language's branch finds its passages through
    chunk_search: the predicate is one the GIN index answers."""
    from knowledge.selectors import search_statement, words_queries

    with switch(alice):
        kb = make_kb()
        french = make_kb(language="french")
        words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
        # Like a real knowledge base: many documents of a few dozen chunks each.
        for d in range(200):
            replace_chunks(
                document=make_document(knowledge_base=kb if d % 4 else french),
                chunks=[
                    chunk(i, f"{words[i % 8]} {words[(i * 3 + d) % 8]} item{i} doc{d}")
                    for i in range(20)
                ],
            )
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE knowledge_chunk, knowledge_document, knowledge_knowledgebase")
            cursor.execute("SET LOCAL enable_seqscan = off")
            sql, params = search_statement(
                query="doc7",
                kb_ids_by_language={"english": [kb.pk], "french": [french.pk]},
                limit=10,
            )
            cursor.execute(f"EXPLAIN {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            cursor.execute("SET LOCAL enable_seqscan = on")
            # A question's words: the same index.
            doc7 = words_queries(query="doc7", languages=["english", "french"])
            sql, params = search_statement(
                query="doc7",
                kb_ids_by_language={"english": [kb.pk], "french": [french.pk]},
                limit=10,
                words=doc7,
            )
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
            words_plan = "\n".join(row[0] for row in cursor.fetchall())
            cursor.execute("SET LOCAL enable_seqscan = on")
        assert plan.count("Bitmap Index Scan on chunk_search") == 2, plan
        assert "Seq Scan on knowledge_chunk" not in plan, plan
        assert words_plan.count("Bitmap Index Scan on chunk_search") == 2, words_plan
        assert len(search_chunks(query="doc7")) == 10
        # Any word finds; the passage with both comes first.
        assert search_chunks(query="doc7 item7")[0].text == "hotel echo item7 doc7"
        assert texts(search_chunks(query='"item7 doc7"')) == ["hotel echo item7 doc7"]


# --- the slice's pieces together ---------------------------------------------------------------


def test_a_markdown_page_extracted_chunked_stored_and_found(alice: User) -> None:
    """extraction -> chunking -> replace_chunks -> search_chunks, as ingestion will chain them."""
    from knowledge.chunking import chunk as make_chunks
    from knowledge.extraction import extract

    page = (
        b"# Operations\n\nGeneral notes about the service.\n\n"
        b"## Deploys\n\nDeploys happen on Fridays after the database upgrade.\n\n"
        b"## Backups\n\nBackups run nightly and are kept for thirty days.\n"
    )
    extracted = extract(data=page, filename="ops.md")
    chunks = make_chunks(extracted.blocks, target_tokens=20, overlap_tokens=4)
    with switch(alice):
        document = make_document(title=extracted.title)
        assert replace_chunks(document=document, chunks=chunks) == len(chunks)
        (hit, *_) = search_chunks(query="deploy friday")
    assert extracted.title == "Operations"
    assert hit.heading_path == ("Operations", "Deploys")
    assert "Fridays after the database upgrade" in hit.text
    assert hit.document_title == "Operations"
