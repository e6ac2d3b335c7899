"""GET changes nothing: every page and fragment, fetched with GET, writes no row except the
browser's own session (its last-seen time and which buffer to reopen)."""

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.contrib.auth.tokens import default_token_generator
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.models import User
from channels_app.models import Message, Notification
from exports.models import Export
from media.models import LinkPreview, Upload
from tenancy import switch
from tests.conftest import storages_with
from tests.helpers import populate

WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|TRUNCATE|ALTER|DROP|CREATE)\b", re.I)
# Views that answer GET with 405 (or only redirect): what they do is a POST.
POST_ONLY = {
    "accounts:sign_out",
    "accounts:session_revoke",
    "accounts:account_delete",
    "accounts:deletion_cancel",
    "channels:server_delete",
    "channels:channel_delete",
    "channels:channel_list_refresh",
    "channels:channel_list_join",
    "knowledge:kb_delete",
    "knowledge:document_delete",
    "knowledge:kb_reindex",
    "knowledge:document_reindex",
    "agents:agent_delete",
    "agents:schedule_pause",
    "agents:schedule_resume",
    "agents:schedule_run",
    "agents:schedule_cancel",
    "llms:provider_delete",
    "chat:send",
    "chat:read",
    "history:notification_read",
    "history:notification_read_all",
    "media:upload",
    "exports:start",
}
# Not a page: the live stream (tests/test_sse.py) and the operators' admin.
# media:serve_upload is public and reads no database at all (tests/test_uploads.py).
# accounts:deletion_pending answers only an account pending deletion (its GET is checked in
# tests/test_account_deletion.py).
ELSEWHERE = {"chat:events", "media:serve_upload", "accounts:deletion_pending"}


def _names(patterns: list[Any], namespace: str = "") -> set[str]:
    names: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "admin":
                continue
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            names |= _names(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(f"{namespace}{pattern.name}")
    return names


def test_no_get_writes_anything_but_the_session(
    alice: User, alice_client: Client, tmp_path: Path
) -> None:
    objs = populate(alice)
    channel = objs["channel"]
    with switch(alice):
        message = Message.objects.create(
            channel=channel, sender="carol", text="alice: ping", server_time="2026-11-23T12:00Z"
        )
        Notification.objects.create(message=message, kind=Notification.Kind.HIGHLIGHT)
        preview = LinkPreview.objects.create(
            url="https://example.org/", status="ok", title="t", image=b"x", image_type="image/png",
            fetched_at="2026-11-23T12:00Z", expires_at="2026-11-24T12:00Z",
        )  # fmt: skip
        upload = Upload.objects.create(
            token="t" * 22, name="a.txt", content_type="text/plain", size=1
        )
        # A ready export whose file is in a storage of this test's own.
        export = Export.objects.create(
            status=Export.Status.READY, file_name="a/export.zip",
            expires_at=timezone.now() + timedelta(days=1),
        )  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "export.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    stores = storages_with("exports", tmp_path)
    gets = {
        "dashboard": reverse("dashboard"),
        "accounts:sign_up": reverse("accounts:sign_up"),
        "accounts:sign_in": reverse("accounts:sign_in"),
        "accounts:session_list": reverse("accounts:session_list"),
        "accounts:account": reverse("accounts:account"),
        "accounts:password_change": reverse("accounts:password_change"),
        "accounts:password_reset": reverse("accounts:password_reset"),
        # A valid link: the view moves the token into the session (allowed) and redirects.
        "accounts:password_reset_confirm": reverse(
            "accounts:password_reset_confirm",
            args=[
                urlsafe_base64_encode(force_bytes(alice.pk)),
                default_token_generator.make_token(alice),
            ],
        ),
        "channels:server_list": reverse("channels:server_list"),
        "channels:server_create": reverse("channels:server_create"),
        "channels:server_detail": reverse("channels:server_detail", args=[objs["server"].pk]),
        "channels:server_edit": reverse("channels:server_edit", args=[objs["server"].pk]),
        "channels:channel_create": reverse("channels:channel_create", args=[objs["server"].pk]),
        "channels:channel_edit": reverse("channels:channel_edit", args=[channel.pk]),
        "channels:server_states": reverse("channels:server_states"),
        "channels:server_state": reverse("channels:server_state", args=[objs["server"].pk]),
        "channels:channel_list": reverse("channels:channel_list", args=[objs["server"].pk])
        + "?q=py",
        "chat:index": reverse("chat:index"),
        "chat:sidebar": reverse("chat:sidebar") + f"?open={channel.pk}",
        "chat:channel": reverse("chat:channel", args=[channel.pk]),
        "chat:history": reverse("chat:history", args=[channel.pk]) + f"?before={message.pk + 1}",
        "chat:lines": reverse("chat:lines", args=[channel.pk]) + "?after=0",
        "chat:info": reverse("chat:info", args=[channel.pk]),
        "agents:agent_list": reverse("agents:agent_list"),
        "agents:agent_create": reverse("agents:agent_create"),
        "agents:agent_detail": reverse("agents:agent_detail", args=[objs["agent"].pk]),
        "agents:agent_edit": reverse("agents:agent_edit", args=[objs["agent"].pk]),
        "agents:task_list": reverse("agents:task_list"),
        "agents:task_detail": reverse("agents:task_detail", args=[objs["task"].pk]),
        "agents:usage": reverse("agents:usage"),
        "knowledge:kb_list": reverse("knowledge:kb_list"),
        "knowledge:kb_create": reverse("knowledge:kb_create"),
        "knowledge:kb_detail": reverse("knowledge:kb_detail", args=[objs["kb"].pk]),
        "knowledge:kb_edit": reverse("knowledge:kb_edit", args=[objs["kb"].pk]),
        "knowledge:kb_documents": reverse("knowledge:kb_documents", args=[objs["kb"].pk]),
        "knowledge:document_create": reverse("knowledge:document_create", args=[objs["kb"].pk]),
        "knowledge:document_detail": reverse(
            "knowledge:document_detail", args=[objs["document"].pk]
        ),
        "knowledge:kb_search": reverse("knowledge:kb_search", args=[objs["kb"].pk]) + "?q=kind",
        "passage_link": reverse("passage_link", args=[objs["document"].pk, 0]),
        "llms:provider_list": reverse("llms:provider_list"),
        "llms:provider_create": reverse("llms:provider_create"),
        "llms:provider_edit": reverse("llms:provider_edit", args=[objs["provider"].pk]),
        "llms:tool_list": reverse("llms:tool_list"),
        "llms:tool_edit": reverse("llms:tool_edit", args=["current_time"]),
        "history:search": reverse("history:search") + "?q=ping",
        "history:notifications": reverse("history:notifications"),
        "history:notification_badge": reverse("history:notification_badge"),
        "history:chat_settings": reverse("history:chat_settings"),
        "media:line_previews": reverse("media:line_previews") + f"?ids={message.pk}",
        "media:preview_image": reverse("media:preview_image", args=[preview.pk]),
        "media:upload_list": reverse("media:upload_list"),
        "media:upload_delete": reverse("media:upload_delete", args=[upload.pk]),
        "exports:index": reverse("exports:index"),
        "exports:detail": reverse("exports:detail", args=[export.pk]),
        "exports:download": reverse("exports:download", args=[export.pk]),
    }
    # Every view of the project is looked at here: a new one must be added to one list.
    assert _names(get_resolver().url_patterns) - set(gets) - POST_ONLY - ELSEWHERE == set()

    for name, url in gets.items():
        with CaptureQueriesContext(connection) as queries, override_settings(STORAGES=stores):
            response = alice_client.get(url)
        assert response.status_code in (200, 302), (name, response.status_code)
        writes = [
            q["sql"]
            for q in queries.captured_queries
            if WRITE.match(q["sql"]) and '"accounts_session"' not in q["sql"]
        ]
        assert writes == [], (name, writes)
    for name in POST_ONLY:
        assert name in _names(get_resolver().url_patterns), name
