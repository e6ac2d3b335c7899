"""Turning a streamed answer into IRC lines as it is written.

A line leaves as soon as it is complete: at a newline, or, for a long paragraph, at the last
word boundary that keeps it under LINE_BYTES of UTF-8 (an IRC line is 512 bytes with the
command, target and the sender's prefix). Nothing is sent mid-word: a fragment waits for the
rest of its line. Blank lines are dropped (IRC cannot send them).

At most `max_lines` lines go out. The last allowed one is held until the writer knows whether
more follows: if it does, that line is cut to make room and ends with a link to the whole
answer; then nothing more is sent, while the answer is still collected for the task.
"""

from collections.abc import Callable

LINE_BYTES = 400
ELLIPSIS = "…"


def utf8_len(text: str) -> int:
    return len(text.encode())


def cut_at_word(text: str, limit: int) -> tuple[str, str]:
    """(head, rest): head fits in `limit` UTF-8 bytes, cut at the last space if there is one,
    else at a character boundary. The space the cut falls on is dropped."""
    data = text.encode()
    if len(data) <= limit:
        return text, ""
    # The longest prefix that is whole characters and fits.
    head = data[:limit].decode(errors="ignore")
    space = head.rfind(" ")
    if space > 0:
        return head[:space].rstrip(), text[space + 1 :].lstrip()
    return head, text[len(head) :].lstrip()


class LineWriter:
    def __init__(
        self,
        send: Callable[[str], None] | None,
        *,
        max_lines: int,
        link: str,
        line_bytes: int = LINE_BYTES,
    ) -> None:
        # None: the answer goes nowhere on IRC (a run from the web without a channel).
        self._send = send
        self.max_lines = max(1, max_lines)
        self.link = link
        self.line_bytes = line_bytes
        self.sent = 0
        self.cut = False
        self._buffer = ""
        self._held: str | None = None
        self.on_first_line: Callable[[], None] | None = None

    @property
    def done(self) -> bool:
        """No further line will be sent."""
        return self.cut or self.sent >= self.max_lines

    def feed(self, text: str) -> None:
        if not text:
            return
        # Any line break is a line break (a lone CR must never reach an IRC socket mid-line);
        # a CRLF split over two chunks only makes a blank line, which is dropped.
        self._buffer += text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._paragraph(line, final=True)
        # A paragraph longer than a line: its complete lines can leave now.
        if utf8_len(self._buffer) > self.line_bytes:
            self._buffer = self._paragraph(self._buffer, final=False)

    def close(self) -> None:
        """The answer is complete: send what is left, then the held last line."""
        if self._buffer:
            self._paragraph(self._buffer, final=True)
            self._buffer = ""
        if self._held is not None and not self.cut:
            self._emit(self._held)
            self._held = None

    def _paragraph(self, text: str, *, final: bool) -> str:
        """Send the lines of `text`; without `final`, keep its last (incomplete) piece."""
        # Only the start is trimmed: a trailing space still separates the next word to come.
        text = text.lstrip()
        while text.strip():
            head, rest = cut_at_word(text, self.line_bytes)
            if not rest and not final:
                return text
            self._line(head)
            text = rest
        return ""

    def _line(self, line: str) -> None:
        line = line.strip()
        if not line or self.cut:
            return
        if self._held is not None:
            # More follows the last allowed line: cut it and point to the whole answer.
            self._emit(self._with_link(self._held))
            self._held = None
            self.cut = True
            return
        if self.sent + 1 >= self.max_lines:
            self._held = line
            return
        self._emit(line)

    def _with_link(self, line: str) -> str:
        suffix = f" {ELLIPSIS} full answer: {self.link}"
        head, _ = cut_at_word(line, max(0, self.line_bytes - utf8_len(suffix)))
        return f"{head}{suffix}" if head else suffix.strip()

    def _emit(self, line: str) -> None:
        self.sent += 1
        if self._send is not None:
            self._send(line)
            if self.sent == 1 and self.on_first_line is not None:
                self.on_first_line()
