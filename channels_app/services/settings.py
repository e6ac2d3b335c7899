"""Writes of an account's chat settings (Account.settings; the keys and their rules are in
channels_app.selectors.settings)."""

from django.db import transaction

from accounts.models import Account
from channels_app.events import SettingsChanged, tell_gateway_on_commit
from channels_app.selectors.settings import (
    HIGHLIGHT_WORDS_KEY,
    LINK_PREVIEWS_KEY,
    RETENTION_DAYS_KEY,
    THEME_KEY,
    THEMES,
    TIME_FORMAT_KEY,
    TIME_FORMATS,
    clean_highlight_words,
    validate_choice,
    validate_retention_days,
)


@transaction.atomic
def save_chat_settings(
    *,
    account: Account,
    highlight_words: list[str],
    history_retention_days: int | None,
    time_format: str | None = None,
    link_previews: bool | None = None,
    theme: str | None = None,
) -> Account:
    """Store the account's chat settings; raises ValidationError on bad values.

    Only the keys given change (the optional ones when not None): the row is locked and re-read,
    so a concurrent write of another key of Account.settings is not lost.
    """
    changes: dict[str, object] = {
        HIGHLIGHT_WORDS_KEY: clean_highlight_words(highlight_words),
        RETENTION_DAYS_KEY: validate_retention_days(history_retention_days),
    }
    if time_format is not None:
        changes[TIME_FORMAT_KEY] = validate_choice(time_format, TIME_FORMATS, "time format")
    if link_previews is not None:
        changes[LINK_PREVIEWS_KEY] = bool(link_previews)
    if theme is not None:
        changes[THEME_KEY] = validate_choice(theme, THEMES, "theme")
    locked = Account.objects.select_for_update().only("id", "settings").get(pk=account.pk)
    new_settings = dict(locked.settings or {})
    new_settings.update(changes)
    # update(), not save(): a plain UPDATE of one column, without TenantMixin's schema checks.
    Account.objects.filter(pk=account.pk).update(settings=new_settings)
    account.settings = new_settings
    tell_gateway_on_commit(SettingsChanged(account_id=str(account.pk)))
    return account
