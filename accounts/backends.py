from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from accounts.models import User


class EmailBackend(ModelBackend):
    """Signs in by email address, in any case; loads the user's account with them."""

    def get_user(self, user_id: Any) -> User | None:
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
