"""Writes of uploads: keeping a file dropped into the chat (within the account's limits) and
sending its link to the channel, and deleting one (its file too)."""

import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Count, Sum

from channels_app.services.chat import send_input
from channels_app.slash_commands import CommandError
from core.limits import check_limit, lock_account
from media import uploads
from media.models import Upload
from tenancy import switch

if TYPE_CHECKING:
    from accounts.models import Account
    from channels_app.models import Channel

logger = logging.getLogger(__name__)
# The buffers a file can be sent to (Channel.Kind: not a server's own buffer). By value: this
# module writes uploads, and the chat's models are written by channels_app's services alone
# (tests/test_architecture.py), so it does not import them.
SENDABLE_KINDS = ("channel", "query")


class UploadRefused(Exception):
    """The file was not kept; the message says why, for the chat's input."""


class TooLarge(UploadRefused):
    """The file is larger than LIMIT_UPLOAD_BYTES."""


@dataclass(frozen=True)
class Sent:
    upload: Upload
    url: str


def _check_limits(size: int) -> None:
    lock_account()
    used = Upload.objects.aggregate(total=Sum("size"), count=Count("id"))
    check_limit(used=used["count"], setting="LIMIT_UPLOADS_PER_ACCOUNT", what="uploaded files")
    check_limit(
        used=used["total"] or 0,
        adding=size,
        setting="LIMIT_UPLOADS_TOTAL_BYTES",
        what="bytes of uploaded files; delete some on the Uploads page",
    )


def upload_and_send(
    *, account_id: uuid.UUID | str, channel: "Channel", file: UploadedFile, uploaded_by: str
) -> Sent:
    """Keep `file` and say its link in `channel`, as if typed. Raises UploadRefused (a limit,
    or the line could not be sent: then nothing is kept)."""
    if channel.kind not in SENDABLE_KINDS:
        raise UploadRefused("Files can be sent to a channel or a conversation, not here.")
    size = file.size or 0
    if size > settings.LIMIT_UPLOAD_BYTES:
        raise TooLarge(
            f"That file is larger than the limit of {settings.LIMIT_UPLOAD_BYTES:,} bytes "
            "(LIMIT_UPLOAD_BYTES)."
        )
    name = uploads.safe_name(file.name or "file")
    token = uploads.new_token()
    stored_name = uploads.storage_name(token, name)
    storage = uploads.storage()
    url = uploads.public_url(token, name)
    try:
        with transaction.atomic():
            try:
                _check_limits(size)
            except ValidationError as exc:
                raise UploadRefused(" ".join(exc.messages)) from None
            upload = Upload.objects.create(
                token=token,
                name=name,
                content_type=uploads.content_type_of(name),
                size=size,
                channel_name=channel.name,
                uploaded_by=uploaded_by[:254],
            )
            saved = storage.save(stored_name, file)
            if saved != stored_name:  # never: the token is new; a storage renaming it is wrong
                storage.delete(saved)
                raise UploadRefused("The file could not be stored; nothing was sent.")
            try:
                send_input(account_id=account_id, channel=channel, text=url)
            except CommandError as exc:
                raise UploadRefused(str(exc)) from None
    except BaseException:
        with contextlib.suppress(Exception):
            storage.delete(stored_name)
        raise
    return Sent(upload=upload, url=url)


@transaction.atomic
def delete_upload(*, upload: Upload) -> None:
    """The row and, once that commits, the file: its link answers 404 from then on."""
    name = upload.storage_name
    upload.delete()

    def remove() -> None:
        try:
            uploads.storage().delete(name)
        except Exception:
            logger.exception("could not delete the uploaded file %s", name)

    transaction.on_commit(remove)


def delete_files_of_account(*, account: "Account", **_: object) -> None:
    """The account is being deleted (tenancy.services.account_deleting, its schema still
    there): its files go once the deletion commits, so their links answer 404."""
    with switch(account):
        names = [u.storage_name for u in Upload.objects.only("token", "name")]
    if not names:
        return

    def remove() -> None:
        storage = uploads.storage()
        for name in names:
            try:
                storage.delete(name)
            except Exception:
                logger.exception("could not delete the uploaded file %s", name)

    transaction.on_commit(remove)
