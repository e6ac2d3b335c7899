"""Writes of an account's chat settings (Account.settings; the keys and their rules are in
channels_app.selectors.settings)."""

from django.db import transaction

from accounts.models import Account
from channels_app.events import SettingsChanged, tell_gateway_on_commit
from channels_app.selectors.settings import (
    HIGHLIGHT_WORDS_KEY,
    RETENTION_DAYS_KEY,
    clean_highlight_words,
    validate_retention_days,
)


@transaction.atomic
def save_chat_settings(
    *, account: Account, highlight_words: list[str], history_retention_days: int | None
) -> Account:
    """Store the account's chat settings; raises ValidationError on bad values.

    Only these two keys change: the row is locked and re-read, so a concurrent write of another
    key of Account.settings is not lost.
    """
    words = clean_highlight_words(highlight_words)
    days = validate_retention_days(history_retention_days)
    locked = Account.objects.select_for_update().only("id", "settings").get(pk=account.pk)
    new_settings = dict(locked.settings or {})
    new_settings[HIGHLIGHT_WORDS_KEY] = words
    new_settings[RETENTION_DAYS_KEY] = days
    # update(), not save(): a plain UPDATE of one column, without TenantMixin's schema checks.
    Account.objects.filter(pk=account.pk).update(settings=new_settings)
    account.settings = new_settings
    tell_gateway_on_commit(SettingsChanged(account_id=str(account.pk)))
    return account
