"""An account's chat settings, kept in Account.settings (JSONB, public schema):

- "highlight_words": list[str]. Words and phrases that raise a highlight besides your nick;
  the gateway matches them case-insensitively.
- "history_retention_days": int | None. Lines older than this many days are deleted
  (channels_app.tasks.prune_history, hourly); None keeps history forever.
- "time_format": "24h" or "12h". How every time of day is shown (chat, search, notifications).
- "link_previews": bool. Whether links in lines get a preview (title, description, image)
  fetched by a worker; on unless switched off.
- "theme": "auto" (follows the device), "light", "dark" or "contrast" (high contrast).

Readers go through `highlight_words(account)` and `retention_days(account)`, which never trust
what is stored (the JSON can be edited in the admin); writers through
channels_app.services.settings.save_chat_settings, which checks with the rules here and tells the
gateway after commit so a change applies within seconds.
"""

import logging
from typing import Any

from django.core.exceptions import ValidationError

from accounts.models import Account

logger = logging.getLogger(__name__)

HIGHLIGHT_WORDS_KEY = "highlight_words"
RETENTION_DAYS_KEY = "history_retention_days"
TIME_FORMAT_KEY = "time_format"
LINK_PREVIEWS_KEY = "link_previews"
THEME_KEY = "theme"

TIME_FORMATS = {"24h": "24-hour (14:05)", "12h": "12-hour (2:05 pm)"}
DEFAULT_TIME_FORMAT = "24h"
THEMES = {
    "auto": "Follow the device",
    "light": "Light",
    "dark": "Dark",
    "contrast": "High contrast",
}
DEFAULT_THEME = "auto"

MAX_HIGHLIGHT_WORDS = 50
MAX_HIGHLIGHT_WORD_LENGTH = 100
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 3650


def highlight_words(account: Account) -> list[str]:
    """The account's highlight words and phrases (not including nicks)."""
    stored = (account.settings or {}).get(HIGHLIGHT_WORDS_KEY)
    if not isinstance(stored, list):
        return []
    try:
        return clean_highlight_words(word for word in stored if isinstance(word, str))
    except ValidationError:
        logger.warning("account %s has invalid highlight words; ignoring them", account.pk)
        return []


def retention_days(account: Account) -> int | None:
    """How many days of history the account keeps; None: forever."""
    stored = (account.settings or {}).get(RETENTION_DAYS_KEY)
    # bool is an int to Python, but `true` is not a number of days.
    if isinstance(stored, bool) or not isinstance(stored, int):
        return None
    if not MIN_RETENTION_DAYS <= stored <= MAX_RETENTION_DAYS:
        return None
    return stored


def time_format(account: Account) -> str:
    """ "24h" or "12h": how the account's times of day are shown."""
    stored = (account.settings or {}).get(TIME_FORMAT_KEY)
    return stored if stored in TIME_FORMATS else DEFAULT_TIME_FORMAT


def link_previews(account: Account) -> bool:
    """Whether links posted in the account's channels get previews (on unless switched off)."""
    stored = (account.settings or {}).get(LINK_PREVIEWS_KEY)
    return stored if isinstance(stored, bool) else True


def theme(account: Account) -> str:
    """One of THEMES' keys."""
    stored = (account.settings or {}).get(THEME_KEY)
    return stored if stored in THEMES else DEFAULT_THEME


def validate_choice(value: Any, choices: dict[str, str], what: str) -> str:
    if value not in choices:
        raise ValidationError(f"Choose a {what}: {', '.join(choices)}.")
    return str(value)


def clean_highlight_words(words: Any) -> list[str]:
    """Trimmed, blank lines dropped, duplicates (ignoring case) dropped, order kept."""
    cleaned: list[str] = []
    seen: set[str] = set()
    errors: list[ValidationError] = []
    for raw in words:
        word = " ".join(str(raw).split())
        if not word:
            continue
        if any(ord(char) < 32 or ord(char) == 127 for char in word):
            errors.append(ValidationError(f"“{word[:30]}” contains a control character."))
            continue
        if len(word) > MAX_HIGHLIGHT_WORD_LENGTH:
            errors.append(
                ValidationError(
                    f"“{word[:30]}…” is longer than {MAX_HIGHLIGHT_WORD_LENGTH} characters."
                )
            )
            continue
        if word.casefold() in seen:
            continue
        seen.add(word.casefold())
        cleaned.append(word)
    if len(cleaned) > MAX_HIGHLIGHT_WORDS:
        errors.append(
            ValidationError(
                f"At most {MAX_HIGHLIGHT_WORDS} highlight words; you gave {len(cleaned)}."
            )
        )
    if errors:
        raise ValidationError(errors)
    return cleaned


def validate_retention_days(days: int | None) -> int | None:
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int):
        raise ValidationError("Give a whole number of days, or leave it blank.")
    if not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS:
        raise ValidationError(
            f"Keep history between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS} days, "
            "or leave it blank to keep it forever."
        )
    return days
