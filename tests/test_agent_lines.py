"""The line writer alone: what a streamed answer becomes on IRC, however it is chunked."""

import pytest

from agents.runner.lines import LineWriter, cut_at_word

ANSWER = (
    "Palaver keeps your IRC connections open.\n\n"
    "It stores every line, so you can read what you missed. "
    + " ".join(["Ünïcode wörds"] * 60)
    + "\nThat is all."
)


def written(answer: str, chunk: int, max_lines: int = 20) -> tuple[list[str], LineWriter]:
    lines: list[str] = []
    writer = LineWriter(lines.append, max_lines=max_lines, link="https://x/agents/tasks/1/")
    for start in range(0, len(answer), chunk):
        writer.feed(answer[start : start + chunk])
    writer.close()
    return lines, writer


@pytest.mark.parametrize("chunk", [1, 3, 17, 1000])
def test_chunking_does_not_change_the_lines(chunk: int) -> None:
    lines, writer = written(ANSWER, chunk)
    assert lines == written(ANSWER, len(ANSWER))[0]
    assert lines[0] == "Palaver keeps your IRC connections open."
    assert lines[-1] == "That is all."
    assert all(0 < len(line.encode()) <= 400 for line in lines)
    assert " ".join(lines).split() == ANSWER.split()
    assert writer.sent == len(lines) and not writer.cut


def test_a_line_leaves_as_soon_as_it_is_complete() -> None:
    lines: list[str] = []
    writer = LineWriter(lines.append, max_lines=5, link="L")
    writer.feed("Hello there")
    assert lines == []  # a fragment waits for the rest of its line
    writer.feed(" friend.\nNext")
    assert lines == ["Hello there friend."]


def test_the_cap_cuts_the_last_line_and_links() -> None:
    lines, writer = written("a\nb\nc\nd\n", 2, max_lines=2)
    assert lines == ["a", "b … full answer: https://x/agents/tasks/1/"]
    assert writer.cut


def test_the_linked_line_stays_under_the_limit() -> None:
    long = "word " * 200
    lines, _ = written(long + "\nmore", 50, max_lines=1)
    (line,) = lines
    assert len(line.encode()) <= 400 and line.endswith("… full answer: https://x/agents/tasks/1/")


def test_a_word_longer_than_a_line_is_cut_on_a_character() -> None:
    head, rest = cut_at_word("é" * 300, 401)
    assert len(head.encode()) == 400 and head + rest == "é" * 300


def test_carriage_returns_and_nuls_never_reach_a_line() -> None:
    lines, _ = written("one\r\ntwo\rthree\x00four\r", 1)
    assert lines == ["one", "two", "threefour"]
