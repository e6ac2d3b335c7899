"""Uploads: a file dropped into the chat is kept in the uploads storage and its link said in the
channel; the link serves it to anyone, never as active content of Palaver's origin (HTML and
SVG as downloads, with nosniff and a sandbox policy; images inline only when they are images);
the limits refuse with a clear error; the uploads page lists and deletes, and another
account's ids are 404 there."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.urls import reverse

from accounts.models import User
from channels_app import events
from channels_app.models import Channel, Server
from media import uploads
from media.models import Upload
from tenancy import switch
from tests.previews_support import png


@pytest.fixture
def storage_dir(storage_dir: Path) -> Iterator[Path]:
    """conftest's uploads directory, with the links on a host of their own."""
    with override_settings(UPLOADS_PUBLIC_URL="https://files.example.org"):
        yield storage_dir


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[events.GatewayCommand]:
    """What the web asks the gateway to send (published to Redis in production)."""
    sent: list[events.GatewayCommand] = []
    monkeypatch.setattr(
        "channels_app.services.chat.publish_command", lambda command, **_: sent.append(command)
    )
    return sent


def _channel(user: User, kind: str = Channel.Kind.CHANNEL, name: str = "#palaver") -> Channel:
    with switch(user):
        server, _ = Server.objects.get_or_create(
            name="Libera", defaults={"host": "irc.libera.chat", "nick": "alice"}
        )
        return Channel.objects.create(server=server, name=name, kind=kind)


def _upload(client: Client, channel: Channel, name: str, data: bytes, **kw: Any) -> Any:
    file = SimpleUploadedFile(name, data, content_type=kw.pop("content_type", "text/html"))
    return client.post(reverse("media:upload", args=[channel.pk]), {"file": file}, **kw)


def _path(url: str) -> str:
    return urlsplit(url).path


def test_an_html_file_is_a_download_never_a_page(
    alice: User, alice_client: Client, client: Client, storage_dir: Path, commands: list[Any]
) -> None:
    channel = _channel(alice)
    response = _upload(alice_client, channel, "../../evil page.html", b"<script>alert(1)</script>")
    assert response.status_code == 201, response.content
    url = response.json()["url"]
    assert url.startswith("https://files.example.org/u/") and url.endswith("/evil_page.html")
    # The link was said in the channel, as a normal line.
    assert [(c.target, c.text, c.kind) for c in commands] == [("#palaver", url, "message")]
    with switch(alice):
        kept = Upload.objects.get()
        assert (kept.name, kept.size, kept.channel_name) == ("evil_page.html", 25, "#palaver")
    stored = storage_dir / kept.token / "evil_page.html"
    assert stored.read_bytes() == b"<script>alert(1)</script>"

    served = client.get(_path(url))  # signed out: the IRC channel's people have no account
    assert served.status_code == 200
    assert served["Content-Type"].startswith("text/html")
    assert served["Content-Disposition"].startswith("attachment")
    assert served["X-Content-Type-Options"] == "nosniff"
    assert served["Content-Security-Policy"].startswith("sandbox")
    assert b"".join(served.streaming_content) == b"<script>alert(1)</script>"  # type: ignore[attr-defined]
    head = client.head(_path(url))
    assert head.status_code == 200 and head["Content-Disposition"].startswith("attachment")
    assert client.post(_path(url)).status_code == 405


@pytest.mark.parametrize(
    ("name", "data", "inline"),
    [
        ("photo.png", png(20, 10), True),
        ("notes.txt", b"plain words", True),
        ("drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>", False),
        ("page.xhtml", b"<html/>", False),
        ("doc.pdf", b"%PDF-1.4", False),
        ("script.js", b"alert(1)", False),
        ("fake.png", b"<html><script>alert(1)</script></html>", False),  # not a PNG
        ("noext", b"\x00\x01", False),
    ],
)
def test_only_safe_images_and_text_are_shown_inline(
    alice: User,
    alice_client: Client,
    client: Client,
    storage_dir: Path,
    commands: list[Any],
    name: str,
    data: bytes,
    inline: bool,
) -> None:
    url = _upload(alice_client, _channel(alice), name, data).json()["url"]
    served = client.get(_path(url))
    assert served.status_code == 200
    disposition = served["Content-Disposition"]
    assert disposition.startswith("inline" if inline else "attachment"), disposition
    assert served["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served["Content-Security-Policy"]
    if name == "photo.png":
        assert served["Content-Type"] == "image/png"


def test_unknown_and_malformed_links_are_404(db: None, client: Client, storage_dir: Path) -> None:
    for path in (
        "/u/AAAAAAAAAAAAAAAAAAAAAA/x.txt",
        "/u/short/x.txt",
        "/u/AAAAAAAAAAAAAAAAAAAAAA/..",
        "/u/AAAAAAAAAAAAAAAAAAAAAA/%2e%2e%2fsettings.py",
    ):
        assert client.get(path).status_code == 404, path


@override_settings(LIMIT_UPLOAD_BYTES=100)
def test_a_file_over_the_size_limit_is_refused_with_the_reason(
    alice: User, alice_client: Client, storage_dir: Path, commands: list[Any]
) -> None:
    response = _upload(alice_client, _channel(alice), "big.txt", b"x" * 101)
    assert response.status_code == 413
    assert "larger than the limit of 100 bytes (LIMIT_UPLOAD_BYTES)" in response.json()["error"]
    assert commands == []
    with switch(alice):
        assert not Upload.objects.exists()


@override_settings(LIMIT_UPLOADS_TOTAL_BYTES=150)
def test_the_accounts_total_is_a_limit(
    alice: User, alice_client: Client, storage_dir: Path, commands: list[Any]
) -> None:
    channel = _channel(alice)
    assert _upload(alice_client, channel, "a.txt", b"x" * 100).status_code == 201
    response = _upload(alice_client, channel, "b.txt", b"x" * 51)
    assert response.status_code == 400
    assert "LIMIT_UPLOADS_TOTAL_BYTES" in response.json()["error"]
    assert len(commands) == 1
    with switch(alice):
        assert Upload.objects.count() == 1
    assert len(list(storage_dir.iterdir())) == 1  # the refused file was not kept


def test_no_upload_into_a_server_buffer_or_without_a_file(
    alice: User, alice_client: Client, storage_dir: Path, commands: list[Any]
) -> None:
    server_buffer = _channel(alice, kind=Channel.Kind.SERVER, name="Libera")
    response = _upload(alice_client, server_buffer, "a.txt", b"x")
    assert response.status_code == 400 and "not here" in response.json()["error"]
    channel = _channel(alice)
    empty = alice_client.post(reverse("media:upload", args=[channel.pk]), {})
    assert empty.status_code == 400 and "No file" in empty.json()["error"]
    assert alice_client.get(reverse("media:upload", args=[channel.pk])).status_code == 405
    assert commands == []


def test_a_refused_line_keeps_nothing(
    alice: User, alice_client: Client, storage_dir: Path, commands: list[Any]
) -> None:
    channel = _channel(alice)
    with override_settings(LIMIT_MESSAGES_PER_MINUTE=0):
        response = _upload(alice_client, channel, "a.txt", b"x")
    assert response.status_code == 400 and "lines a minute" in response.json()["error"]
    with switch(alice):
        assert not Upload.objects.exists()
    assert not storage_dir.exists() or not any(p.is_file() for p in storage_dir.rglob("*"))


def test_the_uploads_page_lists_and_deletes(
    alice: User,
    alice_client: Client,
    client: Client,
    storage_dir: Path,
    commands: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    url = _upload(alice_client, _channel(alice), "notes.txt", b"words").json()["url"]
    page = alice_client.get(reverse("media:upload_list")).content.decode()
    assert "notes.txt" in page and url in page
    with switch(alice):
        kept = Upload.objects.get()
    delete_url = reverse("media:upload_delete", args=[kept.pk])
    assert alice_client.get(delete_url).status_code == 200  # the confirmation; GET deletes nothing
    assert client.get(_path(url)).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):  # the file goes once the row has
        assert alice_client.post(delete_url).status_code == 302
    with switch(alice):
        assert not Upload.objects.exists()
    assert client.get(_path(url)).status_code == 404
    assert not (storage_dir / kept.token / "notes.txt").exists()


def test_another_accounts_uploads_are_404(
    alice: User,
    bob: User,
    alice_client: Client,
    bob_client: Client,
    client: Client,
    storage_dir: Path,
    commands: list[Any],
) -> None:
    channel = _channel(alice)
    url = _upload(alice_client, channel, "notes.txt", b"alice's words").json()["url"]
    with switch(alice):
        kept = Upload.objects.get()
    delete_url = reverse("media:upload_delete", args=[kept.pk])
    assert bob_client.get(delete_url).status_code == 404
    assert bob_client.post(delete_url).status_code == 404
    assert "notes.txt" not in bob_client.get(reverse("media:upload_list")).content.decode()
    # Bob cannot upload into alice's channel id either.
    assert _upload(bob_client, channel, "x.txt", b"x").status_code == 404
    with switch(alice):
        assert Upload.objects.count() == 1
    assert client.get(_path(url)).status_code == 200  # the link itself is public by design
    # Signed out, the pages send to sign in.
    for page in (reverse("media:upload_list"), delete_url):
        assert client.get(page).status_code == 302


def test_names_are_made_safe() -> None:
    assert uploads.safe_name("../../etc/passwd") == "passwd"
    assert uploads.safe_name("C:\\Users\\x\\café menu.PDF") == "cafe_menu.PDF"
    assert uploads.safe_name("..") == "file"
    assert uploads.safe_name("<script>.html") == "script.html"
    long = uploads.safe_name("a" * 300 + ".txt")
    assert len(long) == uploads.MAX_NAME_LENGTH and long.endswith(".txt")
    assert uploads.TOKEN_RE.match(uploads.new_token())


def test_body_limit_follows_the_largest_file_limit() -> None:
    from core.uploads import file_limit, max_body_bytes

    assert file_limit("/chat/12/upload/") == (settings.LIMIT_UPLOAD_BYTES, "LIMIT_UPLOAD_BYTES")
    assert file_limit("/knowledge/1/documents/new/")[1] == "LIMIT_DOCUMENT_BYTES"
    assert max_body_bytes() > settings.LIMIT_UPLOAD_BYTES


def test_deleting_an_account_deletes_its_files(
    alice: User,
    alice_client: Client,
    client: Client,
    storage_dir: Path,
    commands: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from tenancy.services import purge_account

    url = _upload(alice_client, _channel(alice), "notes.txt", b"words").json()["url"]
    assert client.get(_path(url)).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        purge_account(account=alice.account)
    assert client.get(_path(url)).status_code == 404
    assert not any(p.is_file() for p in storage_dir.rglob("*"))
