from contextvars import ContextVar
from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from accounts.models import User

# The session store Django's get_user is reading, while accounts.middleware's
# AuthenticationMiddleware runs it: the store has loaded the session's user (and account)
# with the session row, so get_user below need not query them again.
current_session: ContextVar[Any] = ContextVar("current_session", default=None)


class EmailBackend(ModelBackend):
    """Signs in by email address, in any case; loads the user's account with them."""

    def get_user(self, user_id: Any) -> User | None:
        user = getattr(current_session.get(), "prefetched_user", None)
        if not isinstance(user, User) or str(user.pk) != str(user_id):
            try:
                user = User.objects.select_related("account").get(pk=user_id)
            except (User.DoesNotExist, ValueError):
                return None
        return user if self.user_can_authenticate(user) else None

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        user = super().authenticate(request, username=username, password=password, **kwargs)
        return user if isinstance(user, User) else None
