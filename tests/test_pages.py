"""The configuration pages: forms validate, show field errors, and save what they say."""

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from accounts.models import User
from agents.models import Agent
from channels_app.models import Channel, Server
from knowledge.models import Document, KnowledgeBase
from knowledge.services import index_document_now
from llms.models import AccountLLM, AccountTool
from tenancy import switch
from tests.helpers import make_provider, openai, populate

SERVER = {
    "name": "Libera",
    "host": "irc.libera.chat",
    "port": 6697,
    "tls": "on",
    "tls_verify": "on",
    "nick": "alice",
    "autoconnect": "on",
}


def errors_of(response: Any) -> dict[str, list[str]]:
    form = response.context["form"]
    return {k: [str(e) for e in v] for k, v in form.errors.items()}


def test_every_page_renders(alice: User, alice_client: Client) -> None:
    objs = populate(alice)
    urls = [
        reverse("dashboard"),
        reverse("accounts:session_list"),
        reverse("channels:server_list"),
        reverse("channels:server_create"),
        reverse("channels:server_detail", args=[objs["server"].pk]),
        reverse("channels:channel_create", args=[objs["server"].pk]),
        reverse("agents:agent_list"),
        reverse("agents:agent_create"),
        reverse("agents:agent_detail", args=[objs["agent"].pk]),
        reverse("agents:task_detail", args=[objs["task"].pk]),
        reverse("agents:usage"),
        reverse("knowledge:kb_list"),
        reverse("knowledge:kb_create"),
        reverse("knowledge:kb_detail", args=[objs["kb"].pk]),
        reverse("knowledge:document_detail", args=[objs["document"].pk]),
        reverse("llms:provider_list"),
        reverse("llms:provider_create"),
        reverse("llms:tool_list"),
        reverse("llms:tool_edit", args=["current_time"]),
    ]
    for url in urls:
        response = alice_client.get(url)
        assert response.status_code == 200, url
        assert response["Content-Security-Policy"].startswith("default-src 'self'")
        assert "<script>" not in response.content.decode()  # no inline scripts


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", 0, "greater than or equal to 1"),
        ("port", 70000, "less than or equal to 65535"),
        ("host", "irc..libera", "Enter a host name"),
        ("host", "-bad.example", "Enter a host name"),
        ("nick", "9lives", "A nick starts with"),
        ("nick", "has space", "A nick starts with"),
        ("alt_nicks", "ok_nick bad!nick", "“bad!nick” is not a valid nick."),
        ("username", "me@home", "no spaces or '@'"),
    ],
)
def test_server_form_rejects_bad_input(
    alice_client: Client, field: str, value: str, message: str
) -> None:
    response = alice_client.post(reverse("channels:server_create"), {**SERVER, field: value})
    assert response.status_code == 400
    assert any(message in e for e in errors_of(response)[field]), errors_of(response)


def test_server_form_accepts_ip_and_saves_alt_nicks(alice: User, alice_client: Client) -> None:
    response = alice_client.post(
        reverse("channels:server_create"),
        {**SERVER, "host": "2606:4700:4700::1111", "alt_nicks": "alice_, alice__  [alice]"},
    )
    assert response.status_code == 302
    with switch(alice):
        server = Server.objects.get()
    assert server.host == "2606:4700:4700::1111"
    assert server.alt_nicks == ["alice_", "alice__", "[alice]"]


def test_sasl_username_needs_password(alice_client: Client) -> None:
    response = alice_client.post(
        reverse("channels:server_create"), {**SERVER, "sasl_username": "a"}
    )
    assert "SASL needs a password." in errors_of(response)["sasl_password"]


@pytest.mark.parametrize(
    ("kind", "name", "ok"),
    [
        ("channel", "#python", True),
        ("channel", "&local", True),
        ("channel", "python", False),
        ("channel", "#has space", False),
        ("channel", "#a,b", False),
        ("channel", "#" + "x" * 50, False),
        ("query", "NickServ", True),
        ("query", "#notanick", False),
    ],
)
def test_channel_name_rules(
    alice: User, alice_client: Client, kind: str, name: str, ok: bool
) -> None:
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
    response = alice_client.post(
        reverse("channels:channel_create", args=[server.pk]), {"kind": kind, "name": name}
    )
    assert (response.status_code == 302) is ok, response.content.decode()[:300]
    with switch(alice):
        assert Channel.objects.filter(name=name).exists() is ok


def test_duplicate_channel_name_is_a_field_error(alice: User, alice_client: Client) -> None:
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        Channel.objects.create(server=server, name="#Python")
    response = alice_client.post(
        reverse("channels:channel_create", args=[server.pk]), {"kind": "channel", "name": "#python"}
    )
    assert response.status_code == 400
    assert "already in this server's list" in errors_of(response)["name"][0]


def test_agent_model_must_be_enabled_for_provider(alice: User, alice_client: Client) -> None:
    provider = make_provider(alice, enabled_models=["gpt-4o-mini"], default_model="gpt-4o-mini")
    data = {"name": "Helper", "nick": "helperbot", "enabled": "on", "account_llm": provider.pk}
    response = alice_client.post(reverse("agents:agent_create"), {**data, "model": "gpt-5-turbo"})
    assert response.status_code == 400
    assert "gpt-4o-mini" in errors_of(response)["model"][0]
    response = alice_client.post(reverse("agents:agent_create"), {**data, "model": "gpt-4o-mini"})
    assert response.status_code == 302
    with switch(alice):
        assert Agent.objects.get().model == "gpt-4o-mini"


def test_provider_form_validates_and_never_echoes_key(alice: User, alice_client: Client) -> None:
    url = reverse("llms:provider_create")
    data = {"llm": openai().pk, "api_key": "sk-abc", "enabled_models": "gpt-4o\ngpt-4o-mini"}
    response = alice_client.post(url, {**data, "default_model": "claude"})
    assert "must be one of the enabled models" in errors_of(response)["default_model"][0]
    response = alice_client.post(url, {**data, "api_key": "", "default_model": "gpt-4o"})
    assert "required" in errors_of(response)["api_key"][0]
    assert alice_client.post(url, {**data, "default_model": "gpt-4o"}).status_code == 302
    config = AccountLLM.objects.get(account=alice.account)
    assert config.enabled_models == ["gpt-4o", "gpt-4o-mini"]
    response = alice_client.post(url, {**data, "default_model": "gpt-4o"})
    assert "already configured" in errors_of(response)["llm"][0]


def test_provider_in_use_cannot_be_deleted(alice: User, alice_client: Client) -> None:
    objs = populate(alice)
    url = reverse("llms:provider_delete", args=[objs["provider"].pk])
    response = alice_client.post(url)
    assert response.status_code == 409
    assert "used by agent Helper" in response.content.decode()
    assert AccountLLM.objects.filter(pk=objs["provider"].pk).exists()
    with switch(alice):
        Agent.objects.all().delete()
    assert alice_client.post(url).status_code == 302
    assert not AccountLLM.objects.filter(pk=objs["provider"].pk).exists()


def test_tool_settings_validate(alice: User, alice_client: Client) -> None:
    url = reverse("llms:tool_edit", args=["current_time"])
    response = alice_client.post(url, {"enabled": "on", "setting_timezone": "Mars/Olympus"})
    assert "not a known time zone" in errors_of(response)["setting_timezone"][0]
    assert (
        alice_client.post(url, {"enabled": "on", "setting_timezone": "Europe/Paris"}).status_code
        == 302
    )
    config = AccountTool.objects.get(account=alice.account, tool__slug="current_time")
    assert config.enabled and config.settings == {"timezone": "Europe/Paris"}
    response = alice_client.post(
        reverse("llms:tool_edit", args=["channel_history"]), {"setting_max_lines": 500}
    )
    assert response.status_code == 400
    assert alice_client.get(reverse("llms:tool_edit", args=["no_such_tool"])).status_code == 404


class TestDocuments:
    @pytest.fixture
    def kb(self, alice: User) -> KnowledgeBase:
        with switch(alice):
            return KnowledgeBase.objects.create(name="Handbook")

    def post(self, client: Client, kb: KnowledgeBase, data: dict[str, Any]) -> Any:
        return client.post(reverse("knowledge:document_create", args=[kb.pk]), data)

    def test_pasted_text(self, alice: User, alice_client: Client, kb: KnowledgeBase) -> None:
        response = self.post(alice_client, kb, {"title": "Rules", "text": "Be kind.\n"})
        assert response.status_code == 302
        with switch(alice):
            doc = Document.objects.get()
        assert (doc.title, doc.text, doc.source, doc.status) == (
            "Rules",
            "Be kind.\n",
            "pasted",
            "queued",  # for indexing: tests/test_knowledge_ingest.py follows it there
        )

    def test_markdown_upload(self, alice: User, alice_client: Client, kb: KnowledgeBase) -> None:
        upload = SimpleUploadedFile("faq.md", "# FAQ\n\nÇa marche.".encode(), "text/markdown")
        assert self.post(alice_client, kb, {"file": upload}).status_code == 302
        with switch(alice):
            doc = Document.objects.get()
        assert (doc.title, doc.filename, doc.source) == ("faq", "faq.md", "upload")
        # Kept as it came; its text is what the worker extracts from it.
        assert doc.original is not None
        assert bytes(doc.original) == "# FAQ\n\nÇa marche.".encode()
        assert doc.content_type == "text/markdown" and doc.text == ""
        with switch(alice):
            index_document_now(document_id=doc.pk)
        page = alice_client.get(reverse("knowledge:document_detail", args=[doc.pk]))
        assert "Ça marche." in page.content.decode()

    @pytest.mark.parametrize(
        ("data", "field", "message"),
        [
            ({"title": "x"}, "text", "Paste some text, upload a file or give a web address."),
            ({"text": "words"}, "title", "Give the pasted text a title."),
            ({"file": ("a.docx", b"PK\x03\x04")}, "file", "Upload a .txt, .md, .html or .pdf"),
            ({"file": ("a.txt", b"  \n")}, "file", "That file is empty."),
            ({"url": "ftp://example.org/a.txt"}, "url", "Only http:// and https://"),
        ],
    )
    def test_bad_documents(
        self,
        alice: User,
        alice_client: Client,
        kb: KnowledgeBase,
        data: dict[str, Any],
        field: str,
        message: str,
    ) -> None:
        if "file" in data:
            name, content = data["file"]
            data = {"file": SimpleUploadedFile(name, content)}
        response = self.post(alice_client, kb, data)
        assert response.status_code == 400
        assert any(message in e for e in errors_of(response)[field]), errors_of(response)
        with switch(alice):
            assert Document.objects.count() == 0

    def test_too_large_upload(self, alice_client: Client, kb: KnowledgeBase, settings: Any) -> None:
        settings.LIMIT_DOCUMENT_BYTES = 100
        upload = SimpleUploadedFile("big.txt", b"x" * 101)
        response = self.post(alice_client, kb, {"file": upload})
        error = errors_of(response)["file"][0]
        assert "larger than the limit of 100 bytes (LIMIT_DOCUMENT_BYTES)" in error


def test_delete_server_takes_its_channels(alice: User, alice_client: Client) -> None:
    objs = populate(alice)
    url = reverse("channels:server_delete", args=[objs["server"].pk])
    page = alice_client.get(url).content.decode()
    assert "1 channels and conversations" in page
    assert alice_client.post(url).status_code == 302
    with switch(alice):
        assert not Server.objects.exists() and not Channel.objects.exists()
        assert Agent.objects.get().channels.count() == 0
