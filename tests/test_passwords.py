"""Password change and password reset by email, through a real SMTP server (aiosmtpd on
loopback) and a real Celery worker."""

import email
import re
import socket
import threading
import time
from collections.abc import Iterator
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from celery.contrib.testing.worker import start_worker
from django.test import Client, override_settings
from django.urls import reverse

from accounts.models import Session, User
from config.celery import app
from tests.conftest import signed_in_client
from tests.factories import PASSWORD, UserFactory
from tests.test_config import run_manage

NEW_PASSWORD = "a brand new passphrase for alice"
RESET = reverse("accounts:password_reset")
LINK = re.compile(r"http://testserver/password/reset/[^\s]+/")


class Mailbox:
    """What the SMTP server received."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        message = email.message_from_bytes(envelope.original_content)  # type: ignore[attr-defined]
        with self.arrived:
            self.messages.append(message)
            self.arrived.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 20) -> list[Message]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
        assert len(self.messages) >= count, f"{len(self.messages)} emails arrived, not {count}"
        return self.messages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mailbox(clean_schemas: None) -> Iterator[Mailbox]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with (
            override_settings(
                EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                EMAIL_HOST="127.0.0.1",
                EMAIL_PORT=port,
                EMAIL_USE_TLS=False,
                DEFAULT_FROM_EMAIL="Palaver <palaver@example.org>",
            ),
            start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10),
        ):
            yield box
    finally:
        controller.stop()


def reset_link(message: Message) -> str:
    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    match = LINK.search(body)
    assert match, body
    return match.group(0)


def signed_out(client: Client) -> bool:
    return client.get(reverse("dashboard")).status_code == 302


# --- change -----------------------------------------------------------------------------------


def test_password_change_ends_every_other_session(alice: User) -> None:
    laptop = signed_in_client(alice)
    phone = signed_in_client(alice)
    assert "Change password" in laptop.get(reverse("accounts:session_list")).content.decode()
    response = laptop.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    # Deleted at once, not only refused at their next request: they leave the sessions page
    # and their live streams end.
    assert list(Session.objects.filter(user=alice)) == [
        Session.objects.get(session_key=laptop.session.session_key)
    ]
    assert not signed_out(laptop)
    assert signed_out(phone)
    assert Client().login(username=alice.email, password=NEW_PASSWORD)
    assert not Client().login(username=alice.email, password=PASSWORD)


def test_password_change_with_a_wrong_old_password_is_a_form_error(alice: User) -> None:
    client = signed_in_client(alice)
    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": "not it", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 400
    assert "Your old password was entered incorrectly" in response.content.decode()
    assert Client().login(username=alice.email, password=PASSWORD)


def test_a_session_is_signed_out_when_the_password_changes_elsewhere(alice: User) -> None:
    """Django's session auth hash: an operator (or any code) setting the password signs out
    every session that was made with the old one."""
    browser = signed_in_client(alice)
    operator = signed_in_client(
        UserFactory(email="op@example.org", is_staff=True, is_superuser=True)
    )
    response = operator.post(
        reverse("admin:auth_user_password_change", args=[alice.pk]),
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert signed_out(browser)
    assert not signed_out(operator)


# --- reset by email ---------------------------------------------------------------------------


def test_password_reset_by_email_works_once_and_ends_every_session(mailbox: Mailbox) -> None:
    alice = UserFactory(email="alice@example.org")
    other_browser = signed_in_client(alice)
    sign_in_page = Client().get(reverse("accounts:sign_in")).content.decode()
    assert f'href="{RESET}"' in sign_in_page

    response = Client().post(RESET, {"email": "ALICE@example.org"})
    assert response.status_code == 200
    assert "we have sent a link" in response.content.decode()
    (message,) = mailbox.wait_for(1)
    assert message["To"] == "alice@example.org"
    assert "palaver@example.org" in message["From"]
    link = reset_link(message)

    browser = Client()
    form_page = browser.get(link, follow=True)
    assert form_page.status_code == 200 and "new_password1" in form_page.content.decode()
    # Django moved the token out of the URL before showing the form.
    set_password_url = form_page.redirect_chain[-1][0]
    assert link.split("/")[-2] not in set_password_url
    response = browser.post(
        set_password_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert response.status_code == 302 and response["Location"] == reverse("accounts:sign_in")
    assert not Session.objects.filter(user=alice).exists()
    assert signed_out(other_browser)
    assert Client().login(username=alice.email, password=NEW_PASSWORD)

    # The link works once.
    again = Client().get(link, follow=True).content.decode()
    assert "This link does not work" in again and "new_password1" not in again


def test_password_reset_link_expires(mailbox: Mailbox) -> None:
    UserFactory(email="alice@example.org")
    with override_settings(PASSWORD_RESET_TIMEOUT=1):
        Client().post(RESET, {"email": "alice@example.org"})
        link = reset_link(mailbox.wait_for(1)[0])
        time.sleep(2.2)
        page = Client().get(link, follow=True).content.decode()
    assert "This link does not work" in page and "new_password1" not in page


def test_password_reset_does_not_reveal_whether_an_email_has_an_account(mailbox: Mailbox) -> None:
    UserFactory(email="alice@example.org")
    known = Client().post(RESET, {"email": "alice@example.org"})
    unknown = Client().post(RESET, {"email": "nobody@example.org"})

    def visible(html: str) -> str:
        html = re.sub(r'value="[^"]*"|"X-CSRFToken": "[^"]*"', "", html)
        return html.replace("alice@example.org", "E").replace("nobody@example.org", "E")

    assert known.status_code == unknown.status_code == 200
    assert visible(known.content.decode()) == visible(unknown.content.decode())
    mailbox.wait_for(1)
    time.sleep(1)
    assert [m["To"] for m in mailbox.messages] == ["alice@example.org"]


@override_settings(PASSWORD_RESET_MAX_PER_EMAIL=2, PASSWORD_RESET_MAX_PER_CLIENT=100)
def test_password_reset_emails_are_throttled_per_address(mailbox: Mailbox) -> None:
    UserFactory(email="alice@example.org")
    for n in range(4):
        response = Client(REMOTE_ADDR=f"192.0.2.{n + 1}").post(
            RESET, {"email": "Alice@example.org"}
        )
        assert response.status_code == 200 and "we have sent a link" in response.content.decode()
    mailbox.wait_for(2)
    time.sleep(1)
    assert len(mailbox.messages) == 2


@override_settings(PASSWORD_RESET_MAX_PER_EMAIL=100, PASSWORD_RESET_MAX_PER_CLIENT=2)
def test_password_reset_requests_are_throttled_per_client(db: None) -> None:
    for n in range(2):
        response = Client(REMOTE_ADDR="203.0.113.9").post(RESET, {"email": f"x{n}@example.org"})
        assert response.status_code == 200
    response = Client(REMOTE_ADDR="203.0.113.9").post(RESET, {"email": "x3@example.org"})
    assert response.status_code == 429
    assert "Too many reset requests" in response.content.decode()
    assert (
        Client(REMOTE_ADDR="198.51.100.4").post(RESET, {"email": "y@example.org"}).status_code
        == 200
    )


def test_password_reset_with_a_malformed_email_is_a_form_error(db: None) -> None:
    response = Client().post(RESET, {"email": "not an email"})
    assert response.status_code == 400
    assert "Enter a valid email address." in response.content.decode()


# --- email configuration ----------------------------------------------------------------------


def test_email_goes_to_the_local_mail_server_unless_configured() -> None:
    show = (
        "from django.conf import settings as s; print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT)"
    )

    def email_settings(**env: str) -> str:
        result = run_manage("shell", "-c", show, **env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    smtp = "django.core.mail.backends.smtp.EmailBackend"
    assert email_settings(DEBUG="false", EMAIL_URL="") == f"{smtp} localhost 25"
    assert email_settings(DEBUG="true", EMAIL_URL="").startswith(
        "django.core.mail.backends.console.EmailBackend"
    )
    assert email_settings(DEBUG="false", EMAIL_URL="smtp+tls://u:p@mail.example.org:587") == (
        f"{smtp} mail.example.org 587"
    )


def test_bad_email_url_is_one_clear_line() -> None:
    result = run_manage("check", EMAIL_URL="pigeon://loft")
    assert result.returncode == 2
    assert "EMAIL_URL has a bad value" in result.stderr
