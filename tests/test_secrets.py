"""Secrets are encrypted at rest, never rendered back, never logged."""

import logging

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.test import override_settings
from django.urls import reverse

from accounts.models import User
from channels_app.models import Server
from core import crypto
from llms.models import AccountLLM
from tenancy import switch
from tests.conftest import signed_in_client
from tests.helpers import openai

SERVER_PASSWORD = "srv-pass-7Qx9-unique"
SASL_PASSWORD = "sasl-pass-K2m4-unique"
CHANNEL_KEY = "chan-key-P0o9-unique"
API_KEY = "sk-live-api-key-Zz81-unique"
SECRETS = (SERVER_PASSWORD, SASL_PASSWORD, CHANNEL_KEY, API_KEY)


def _all_text_in_schema(schema: str) -> str:
    """Every row of every table in a schema, as text."""
    chunks: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
        )
        for (table,) in cursor.fetchall():
            cursor.execute(f'SELECT t::text FROM "{schema}"."{table}" t')
            chunks.extend(row[0] for row in cursor.fetchall())
    return "\n".join(chunks)


def test_secrets_encrypted_in_db_absent_from_html_and_logs(
    alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    connection.force_debug_cursor = True  # log every SQL statement with its parameters
    try:
        client = signed_in_client(alice)
        response = client.post(
            reverse("channels:server_create"),
            {
                "name": "Libera",
                "host": "irc.libera.chat",
                "port": 6697,
                "tls": "on",
                "nick": "alice",
                "password": SERVER_PASSWORD,
                "sasl_username": "alice",
                "sasl_password": SASL_PASSWORD,
                "autoconnect": "on",
            },
        )
        assert response.status_code == 302
        with switch(alice):
            server = Server.objects.get()
        response = client.post(
            reverse("channels:channel_create", args=[server.pk]),
            {"kind": "channel", "name": "#secret", "key": CHANNEL_KEY, "autojoin": "on"},
        )
        assert response.status_code == 302
        response = client.post(
            reverse("llms:provider_create"),
            {
                "llm": openai().pk,
                "api_key": API_KEY,
                "enabled_models": "gpt-4o-mini",
                "default_model": "gpt-4o-mini",
            },
        )
        assert response.status_code == 302, response.content
        config = AccountLLM.objects.get(account=alice.account)

        pages = [
            reverse("channels:server_detail", args=[server.pk]),
            reverse("channels:server_edit", args=[server.pk]),
            reverse("llms:provider_list"),
            reverse("llms:provider_edit", args=[config.pk]),
            reverse("dashboard"),
        ]
        with switch(alice):
            pages.append(reverse("channels:channel_edit", args=[server.channels.get().pk]))
        # A form re-rendered with errors must not echo a secret either.
        error_page = client.post(
            reverse("channels:server_edit", args=[server.pk]),
            {
                "name": "Libera",
                "host": "bad host!",
                "port": 6697,
                "nick": "alice",
                "password": SERVER_PASSWORD,
            },
        )
        assert error_page.status_code == 400
        html = error_page.content.decode() + "".join(
            client.get(url).content.decode() for url in pages
        )
    finally:
        connection.force_debug_cursor = False

    for secret in SECRETS:
        assert secret not in html, "a secret was rendered"
        assert secret not in caplog.text, "a secret was logged"
    assert "SELECT" in caplog.text  # the SQL log was really captured

    stored = _all_text_in_schema(alice.account.schema_name) + _all_text_in_schema("public")
    for secret in SECRETS:
        assert secret not in stored, "a secret is stored in plain text"
    # ...but they are there, encrypted, and read back in Python.
    with switch(alice):
        server = Server.objects.get()
        assert server.password == SERVER_PASSWORD
        assert server.sasl_password == SASL_PASSWORD
        assert server.channels.get().key == CHANNEL_KEY
    assert AccountLLM.objects.get(account=alice.account).api_key == API_KEY


def test_blank_secret_keeps_the_stored_one_and_clear_removes_it(alice: User) -> None:
    client = signed_in_client(alice)
    with switch(alice):
        server = Server.objects.create(
            name="Libera", host="irc.libera.chat", nick="alice", password=SERVER_PASSWORD
        )
    form = {"name": "Libera 2", "host": "irc.libera.chat", "port": 6697, "nick": "alice"}
    url = reverse("channels:server_edit", args=[server.pk])
    assert client.post(url, {**form, "password": ""}).status_code == 302
    with switch(alice):
        assert Server.objects.get().password == SERVER_PASSWORD
    assert client.post(url, {**form, "clear_password": "on"}).status_code == 302
    with switch(alice):
        assert Server.objects.get().password == ""


def test_key_rotation_keeps_old_tokens_readable() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(SECRET_ENCRYPTION_KEYS=[old]):
        token = crypto.encrypt("hunter2")
    with override_settings(SECRET_ENCRYPTION_KEYS=[new, old]):
        assert crypto.decrypt(token) == "hunter2"
        rotated = crypto.rotate(token)
        assert crypto.encrypt("x") and rotated != token
    with override_settings(SECRET_ENCRYPTION_KEYS=[new]):
        assert crypto.decrypt(rotated) == "hunter2"
        with pytest.raises(crypto.SecretDecryptionError):
            crypto.decrypt(token)
