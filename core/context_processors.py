"""Template context for every page."""

from django.http import HttpRequest

from channels_app.selectors.settings import DEFAULT_THEME, theme


def theme_context(request: HttpRequest) -> dict[str, str]:
    """`theme`: the signed-in account's theme ("auto", "light", "dark" or "contrast"), which
    base.html puts on <html data-theme>. Rendered by the server, not applied by a script, so a
    page never paints in the wrong colours first. Signed out: "auto", the device's scheme.

    The account is the one the tenancy middleware already loaded (user.account is cached on the
    user), so this costs no query."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return {"theme": theme(user.account)}
    return {"theme": DEFAULT_THEME}
