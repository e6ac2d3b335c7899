"""The link-preview listener of stored lines (registered in media.apps): runs in the message
hook's task, in the account's schema, once per committed batch the gateway let through
(gateway.manager.Gateway.hook_wanted: a line with a link, previews on)."""

import uuid

from accounts.models import Account
from channels_app.models import Message
from channels_app.selectors.settings import link_previews
from media.previews import links_in
from media.services.previews import LineLinks, queue_previews

# Lines whose links are previewed: what people say, not joins, topics or server notices.
PREVIEWED_KINDS = (Message.Kind.MESSAGE, Message.Kind.ACTION, Message.Kind.NOTICE)


def preview_links(account_id: uuid.UUID, message_ids: list[int]) -> None:
    # Fresh from the database: the switch may have changed since the gateway read it.
    account = Account.objects.only("id", "settings").filter(pk=account_id).first()
    if account is None or not link_previews(account):
        return
    rows = Message.objects.filter(
        pk__in=message_ids, kind__in=PREVIEWED_KINDS, text__iregex=r"https?://"
    ).values_list("id", "channel_id", "text")
    lines = [LineLinks(mid, cid, urls) for mid, cid, text in rows if (urls := links_in(text))]
    if lines:
        queue_previews(account_id=account_id, lines=lines)
