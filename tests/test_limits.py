"""Limits an operator sets (LIMIT_*): refused by the services, inside their transaction, and
shown as a form error that names the limit."""

import threading
from typing import Any

import pytest
from django.db import close_old_connections, transaction
from django.test import Client
from django.urls import reverse

from accounts.models import User
from channels_app.models import Channel, Server
from channels_app.services import servers as channel_services
from core.limits import LimitReached
from knowledge import services as knowledge_services
from knowledge.models import Document, KnowledgeBase
from tenancy import switch
from tests.factories import UserFactory
from tests.test_pages import SERVER, errors_of


def refused(response: Any, setting: str) -> str:
    assert response.status_code == 400
    message = " ".join(errors_of(response).get("__all__", []))
    assert setting in message, errors_of(response)
    return message


def test_servers_per_account(alice: User, alice_client: Client, settings: Any) -> None:
    settings.LIMIT_SERVERS_PER_ACCOUNT = 2
    url = reverse("channels:server_create")
    for name in ("One", "Two"):
        assert alice_client.post(url, {**SERVER, "name": name}).status_code == 302
    message = refused(
        alice_client.post(url, {**SERVER, "name": "Three"}), "LIMIT_SERVERS_PER_ACCOUNT"
    )
    assert "limit of 2 IRC servers" in message
    with switch(alice):
        assert Server.objects.count() == 2
        server = Server.objects.get(name="One")
    # Editing one that exists is not adding one.
    edit = reverse("channels:server_edit", args=[server.pk])
    assert alice_client.post(edit, {**SERVER, "name": "Uno"}).status_code == 302


def test_channels_per_server(alice: User, alice_client: Client, settings: Any) -> None:
    settings.LIMIT_CHANNELS_PER_SERVER = 2
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        other = Server.objects.create(name="EFnet", host="irc.efnet.org", nick="alice")
        # The server's own buffer is the gateway's, not one of the list's channels.
        Channel.objects.create(server=server, name="*server*", kind=Channel.Kind.SERVER)
    url = reverse("channels:channel_create", args=[server.pk])
    assert alice_client.post(url, {"kind": "channel", "name": "#one"}).status_code == 302
    assert alice_client.post(url, {"kind": "query", "name": "bob"}).status_code == 302
    message = refused(
        alice_client.post(url, {"kind": "channel", "name": "#three"}), "LIMIT_CHANNELS_PER_SERVER"
    )
    assert "limit of 2 channels and conversations per server" in message
    # Per server: another server has room.
    other_url = reverse("channels:channel_create", args=[other.pk])
    assert alice_client.post(other_url, {"kind": "channel", "name": "#one"}).status_code == 302
    with switch(alice):
        assert Channel.objects.filter(server=server).count() == 3


def test_knowledge_bases_per_account(alice: User, alice_client: Client, settings: Any) -> None:
    settings.LIMIT_KNOWLEDGE_BASES_PER_ACCOUNT = 1
    url = reverse("knowledge:kb_create")
    assert alice_client.post(url, {"name": "Rules"}).status_code == 302
    refused(alice_client.post(url, {"name": "More"}), "LIMIT_KNOWLEDGE_BASES_PER_ACCOUNT")
    with switch(alice):
        assert KnowledgeBase.objects.count() == 1


def test_documents_per_account_and_their_total_size(
    alice: User, alice_client: Client, settings: Any
) -> None:
    settings.LIMIT_DOCUMENTS_PER_ACCOUNT = 3
    settings.LIMIT_DOCUMENTS_TOTAL_BYTES = 100
    with switch(alice):
        first = KnowledgeBase.objects.create(name="First")
        second = KnowledgeBase.objects.create(name="Second")

    def add(kb: KnowledgeBase, text: str) -> Any:
        url = reverse("knowledge:document_create", args=[kb.pk])
        return alice_client.post(url, {"title": "Doc", "text": text})

    assert add(first, "é" * 20).status_code == 302  # 40 bytes in UTF-8
    assert add(second, "x" * 50).status_code == 302
    # Counted in bytes across the account's knowledge bases: 40 + 50 + 11 > 100.
    message = refused(add(first, "y" * 11), "LIMIT_DOCUMENTS_TOTAL_BYTES")
    assert "limit of 100 bytes of documents in all" in message
    assert add(first, "y" * 10).status_code == 302
    refused(add(second, "z"), "LIMIT_DOCUMENTS_PER_ACCOUNT")
    with switch(alice):
        assert Document.objects.count() == 3
        Document.objects.filter(knowledge_base=second).delete()
    # Deleting frees both the place and the bytes.
    assert add(second, "z" * 50).status_code == 302


def test_two_requests_at_once_cannot_both_take_the_last_place(
    clean_schemas: None, settings: Any
) -> None:
    """The second save waits for the first one's transaction, then counts what it added."""
    settings.LIMIT_SERVERS_PER_ACCOUNT = 1
    alice = UserFactory(email="alice@example.org")
    first_saved = threading.Event()
    release_first = threading.Event()
    outcome: dict[str, Any] = {}

    def save(name: str) -> None:
        with switch(alice):
            channel_services.save_server(
                account_id=alice.account_id,
                server=Server(name=name, host="irc.libera.chat", nick="alice"),
                alt_nicks=[],
                secrets={},
            )

    def first() -> None:
        try:
            with transaction.atomic():
                save("First")
                first_saved.set()
                release_first.wait(10)
            outcome["first"] = "saved"
        finally:
            close_old_connections()

    def second() -> None:
        try:
            save("Second")
            outcome["second"] = "saved"
        except LimitReached as exc:
            outcome["second"] = str(exc)
        finally:
            close_old_connections()

    one = threading.Thread(target=first)
    one.start()
    assert first_saved.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(1)
    # Waiting on the first transaction's lock, not counting past it.
    assert two.is_alive(), outcome
    release_first.set()
    one.join(10)
    two.join(10)
    assert outcome["first"] == "saved"
    assert "LIMIT_SERVERS_PER_ACCOUNT" in outcome["second"]
    with switch(alice):
        assert list(Server.objects.values_list("name", flat=True)) == ["First"]


def test_limit_reached_names_its_setting(alice: User, settings: Any) -> None:
    settings.LIMIT_DOCUMENT_BYTES = 10
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Rules")
        # The service refuses what a form did not check (a task, the shell, an API later).
        with pytest.raises(LimitReached, match="LIMIT_DOCUMENT_BYTES"):
            knowledge_services.add_document(knowledge_base=kb, title="Big", text="x" * 11)
