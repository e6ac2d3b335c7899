"""Isolation is the product: one account never sees or touches another's data."""

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from channels_app.models import Server
from llms.models import AccountLLM, AccountTool, Tool
from llms.selectors import account_llms, account_tools
from llms.services import configure_tool
from tenancy import switch
from tenancy.context import connection
from tests.conftest import signed_in_client
from tests.factories import PASSWORD
from tests.helpers import make_provider, populate


def test_user_a_cannot_see_user_b_servers(alice: User, bob: User) -> None:
    with switch(bob):
        Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
    with switch(alice):
        assert Server.objects.count() == 0
        assert not Server.objects.filter(host="irc.efnet.org").exists()


def test_tenant_switch_scopes_queries(alice: User, bob: User) -> None:
    with switch(alice):
        Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
    with switch(bob):
        Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
    with switch(alice):
        assert list(Server.objects.values_list("host", flat=True)) == ["irc.libera.chat"]
        with switch(bob):  # nested: B inside A, then A again
            assert list(Server.objects.values_list("host", flat=True)) == ["irc.efnet.org"]
        assert list(Server.objects.values_list("host", flat=True)) == ["irc.libera.chat"]
    assert connection.schema_name == "public"


def test_authenticated_user_only_sees_their_data(alice: User, bob: User) -> None:
    client = Client()
    assert (
        client.post(
            reverse("accounts:sign_in"), {"email": alice.email, "password": PASSWORD}
        ).status_code
        == 302
    )
    response = client.post(
        reverse("channels:server_create"),
        {
            "name": "Libera of Alice",
            "host": "irc.libera.chat",
            "port": 6697,
            "tls": "on",
            "tls_verify": "on",
            "nick": "alice",
            "autoconnect": "on",
        },
    )
    assert response.status_code == 302, response.content
    assert "irc.libera.chat" in client.get(reverse("channels:server_list")).content.decode()
    client.post(reverse("accounts:sign_out"))

    assert (
        client.post(
            reverse("accounts:sign_in"), {"email": bob.email, "password": PASSWORD}
        ).status_code
        == 302
    )
    page = client.get(reverse("channels:server_list")).content.decode()
    assert "irc.libera.chat" not in page
    assert "Libera of Alice" not in page
    assert "Libera of Alice" not in client.get(reverse("dashboard")).content.decode()


def _object_urls(objs: dict) -> list[tuple[str, str]]:
    """(method, url) for every URL that names one of the objects."""
    server, channel, kb = objs["server"], objs["channel"], objs["kb"]
    document, agent, provider = objs["document"], objs["agent"], objs["provider"]
    urls = [
        reverse("channels:server_detail", args=[server.pk]),
        reverse("channels:server_edit", args=[server.pk]),
        reverse("channels:server_delete", args=[server.pk]),
        reverse("channels:channel_create", args=[server.pk]),
        reverse("channels:channel_edit", args=[channel.pk]),
        reverse("channels:channel_delete", args=[channel.pk]),
        reverse("knowledge:kb_detail", args=[kb.pk]),
        reverse("knowledge:kb_edit", args=[kb.pk]),
        reverse("knowledge:kb_delete", args=[kb.pk]),
        reverse("knowledge:kb_documents", args=[kb.pk]),
        reverse("knowledge:kb_reindex", args=[kb.pk]),
        reverse("knowledge:document_create", args=[kb.pk]),
        reverse("knowledge:document_detail", args=[document.pk]),
        reverse("knowledge:document_delete", args=[document.pk]),
        reverse("knowledge:document_reindex", args=[document.pk]),
        reverse("agents:agent_detail", args=[agent.pk]),
        reverse("agents:agent_edit", args=[agent.pk]),
        reverse("agents:agent_delete", args=[agent.pk]),
        reverse("agents:task_detail", args=[objs["task"].pk]),
        reverse("llms:provider_edit", args=[provider.pk]),
        reverse("llms:provider_delete", args=[provider.pk]),
    ]
    return [(method, url) for url in urls for method in ("get", "post")]


def test_other_account_gets_404_on_every_object_url(alice: User, bob: User) -> None:
    objs = populate(alice)
    bob_client = signed_in_client(bob)
    urls = _object_urls(objs)
    assert len(urls) == 42
    for method, url in urls:
        response = getattr(bob_client, method)(url, {"name": "stolen", "host": "x.org"})
        assert response.status_code == 404, f"{method.upper()} {url} -> {response.status_code}"
    # A still has everything, unchanged.
    alice_client = signed_in_client(alice)
    post_only = {
        reverse("knowledge:kb_reindex", args=[objs["kb"].pk]),
        reverse("knowledge:document_reindex", args=[objs["document"].pk]),
    }
    for method, url in urls:
        if method == "get":
            assert alice_client.get(url).status_code == (405 if url in post_only else 200), url
    with switch(alice):
        assert Server.objects.get().name == "Libera"


def test_signed_out_visitor_is_sent_to_sign_in(alice: User) -> None:
    objs = populate(alice)
    client = Client()
    for method, url in _object_urls(objs):
        response = getattr(client, method)(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("accounts:sign_in"))


def test_provider_and_tool_rows_are_scoped_by_account(alice: User, bob: User) -> None:
    provider = make_provider(alice)
    tool = Tool.objects.get(slug="current_time")
    configure_tool(
        account=alice.account, tool=tool, enabled=True, settings={"timezone": "Asia/Tokyo"}
    )

    assert list(account_llms(account=bob.account)) == []
    assert list(account_tools(account=bob.account)) == []
    assert list(account_llms(account=alice.account)) == [provider]

    bob_client = signed_in_client(bob)
    providers_page = bob_client.get(reverse("llms:provider_list")).content.decode()
    assert str(provider.pk) not in providers_page and "gpt-4o-mini" not in providers_page
    tool_page = bob_client.get(reverse("llms:tool_edit", args=[tool.slug])).content.decode()
    assert "Asia/Tokyo" not in tool_page
    # B saving the tool creates B's own row and leaves A's alone.
    bob_client.post(reverse("llms:tool_edit", args=[tool.slug]), {"setting_timezone": "UTC"})
    assert AccountTool.objects.get(account=alice.account, tool=tool).settings == {
        "timezone": "Asia/Tokyo"
    }
    assert AccountTool.objects.get(account=bob.account, tool=tool).enabled is False
    assert AccountLLM.objects.filter(account=bob.account).count() == 0


def test_agent_form_offers_only_own_choices(alice: User, bob: User) -> None:
    populate(alice)
    bob_provider = make_provider(bob, default_model="gpt-4o")
    page = signed_in_client(bob).get(reverse("agents:agent_create")).content.decode()
    assert "#palaver" not in page and "Handbook" not in page
    assert str(bob_provider.pk) in page
    alice_provider = AccountLLM.objects.get(account=alice.account)
    assert str(alice_provider.pk) not in page


@pytest.mark.urls("tests.urls")
def test_request_runs_in_user_schema_and_ends_on_public(alice: User) -> None:
    client = signed_in_client(alice)
    assert client.get("/_test/schema/").content.decode() == alice.account.schema_name
    assert connection.schema_name == "public"
    assert Client().get("/_test/schema/").content.decode() == "public"


@pytest.mark.urls("tests.urls")
def test_connection_back_on_public_after_exception(alice: User) -> None:
    client = signed_in_client(alice)
    client.raise_request_exception = False
    response = client.get("/_test/explode/")
    assert response.status_code == 500
    assert connection.schema_name == "public"
