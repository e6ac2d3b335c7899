"""Helpers the operator commands share. The leading underscore keeps Django from listing this
module as a command."""

import contextlib
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any

from django.core.management.base import CommandError, OutputWrapper
from django.db.models import Q
from tqdm import tqdm

from tenancy.context import tenant_model

if TYPE_CHECKING:  # see tenancy/context.py: tenancy never imports accounts at run time
    from accounts.models import Account


def find_account(name_or_id: str) -> "Account":
    """The account an operator named by its name (any case), id or schema name."""
    text = name_or_id.strip()
    if not text:
        raise CommandError("No account given: pass its name, id or schema name.")
    query = Q(name__iexact=text) | Q(schema_name=text)
    with contextlib.suppress(ValueError):  # not a UUID: then it is a name or schema
        query |= Q(pk=uuid.UUID(text))
    matches = list(tenant_model().objects.filter(query)[:2])
    if not matches:
        raise CommandError(
            f"No account is named {text!r} or has that id or schema. "
            "`manage.py list_accounts` shows them all."
        )
    if len(matches) > 1:
        raise CommandError(
            f"{text!r} matches more than one account ({matches[0].pk}, {matches[1].pk}); "
            "pass the id instead."
        )
    return matches[0]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _unstyled(text: str) -> str:
    return text


class _LineStream:
    """What tqdm writes to. A command's OutputWrapper ends every write with a newline, which would
    turn each in-place redraw into a new line; and a pipe or log file is better served by whole
    lines than by carriage-return redraws, so off a terminal each redraw becomes one line."""

    def __init__(self, out: OutputWrapper) -> None:
        self._out = out
        self._tty = out.isatty()

    @property
    def encoding(self) -> str | None:
        return getattr(self._out, "encoding", None)

    def fileno(self) -> int:
        # tqdm asks the terminal's width through this; a StringIO raises, which tqdm tolerates.
        result: int = self._out.fileno()
        return result

    def write(self, text: str) -> int:
        # Unstyled: on a terminal a command's stderr colours everything as an error.
        if self._tty:
            self._out.write(text, _unstyled, ending="")
        else:
            line = text.replace("\r", "").rstrip()
            if line:
                self._out.write(line, _unstyled)
        return len(text)

    def flush(self) -> None:
        self._out.flush()


class ProgressBar:
    """A tqdm bar (counts, rate, time left) on a command's stderr."""

    def __init__(self, out: OutputWrapper, *, total: int, desc: str, unit: str) -> None:
        stream = _LineStream(out)
        tty = out.isatty()
        self._bar: tqdm[Any] = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=stream,
            dynamic_ncols=tty,
            ascii=not tty,
            # Off a terminal every redraw is a line of log: a few per minute are plenty.
            mininterval=0.1 if tty else 15.0,
        )

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bar.close()
