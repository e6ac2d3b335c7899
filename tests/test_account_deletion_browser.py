"""Deleting an account and cancelling it, in a real browser (Chromium through Playwright,
against uvicorn): the account page's Delete section on a desktop and a phone, a wrong password
shown at its field, the sign-in page after the request, the deletion page with Cancel; axe finds
nothing serious on either page."""

from typing import Any, cast

import pytest
from playwright.sync_api import Browser, Page, expect

from accounts.models import Account, User
from tests.factories import PASSWORD, UserFactory
from tests.test_accessibility import axe_violations, dangling_references, describe, settle
from tests.test_chat_e2e import DESKTOP, PHONE, AsgiServer, asgi_server, chromium

__all__ = ["asgi_server", "chromium"]  # fixtures, used here by name


def sign_in(page: Page, base: str, email: str) -> None:
    page.goto(base + "/sign-in/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    settle(page)


def check_page(page: Page, width: int) -> list[str]:
    problems = describe(page.url, axe_violations(page))
    problems += dangling_references(page)
    overflow = page.evaluate("document.documentElement.scrollWidth")
    if overflow > width:
        problems.append(f"{page.url} overflows {width}px: {overflow}px")
    return problems


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_delete_then_cancel_in_the_browser(
    asgi_server: AsgiServer, chromium: Browser, viewport: Any
) -> None:
    base = asgi_server.url
    alice = cast(User, UserFactory(email="alice@example.org", account_name="Alice's place"))
    context = chromium.new_context(viewport=viewport, timezone_id="UTC")
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems: list[str] = []
    try:
        sign_in(page, base, alice.email)
        page.goto(base + "/account/")
        settle(page)
        section = page.get_by_role("region", name="Delete account")
        expect(section).to_be_visible()
        problems += check_page(page, viewport["width"])

        section.get_by_label("Account name").fill("Alice's place")
        section.get_by_label("Your password").fill("not my password")
        section.get_by_role("button", name="Delete account").click()
        settle(page)
        expect(page.get_by_text("That is not your password.")).to_be_visible()
        problems += check_page(page, viewport["width"])
        assert not Account.objects.get(pk=alice.account_id).pending_deletion

        section = page.get_by_role("region", name="Delete account")
        section.get_by_label("Account name").fill("Alice's place")
        section.get_by_label("Your password").fill(PASSWORD)
        section.get_by_role("button", name="Delete account").click()
        settle(page)
        assert page.url.endswith("/sign-in/")
        expect(page.get_by_text("will be deleted on")).to_be_visible()
        account = Account.objects.get(pk=alice.account_id)
        assert account.pending_deletion

        sign_in(page, base, alice.email)
        assert page.url.endswith("/account/deletion/")
        expect(page.get_by_role("heading", level=1)).to_contain_text("scheduled for deletion")
        expect(page.get_by_text(f"{account.purge_after:%-d %B %Y}")).to_be_visible()
        problems += check_page(page, viewport["width"])
        page.get_by_role("button", name="Cancel deletion").click()
        settle(page)
        assert page.url == base + "/"
        expect(page.get_by_text("is cancelled")).to_be_visible()
        assert not Account.objects.get(pk=alice.account_id).pending_deletion
    finally:
        context.close()
    assert problems == []
