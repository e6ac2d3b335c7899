"""Django's database session engine, on our Session model, recording who, from where, and when."""

import logging
from typing import Any

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.core.exceptions import SuspiciousOperation
from django.db import DatabaseError, IntegrityError, router, transaction
from django.utils import timezone


class SessionStore(DBStore):
    # Set per request by accounts.middleware.SessionMetadataMiddleware.
    client_ip: str | None = None
    user_agent: str = ""

    # The user (with their account) the session row names, loaded with the row in one query:
    # accounts.backends.EmailBackend.get_user takes it instead of querying again (the session
    # hash is still checked by Django's get_user). None when the row names no user.
    prefetched_user: Any = None

    def _get_session_from_db(self) -> Any:
        """Django's, with the user and account joined to the session row."""
        model: Any = self.model  # accounts.models.Session; django-stubs knows the base only
        try:
            session = model.objects.select_related("user__account").get(
                session_key=self.session_key, expire_date__gt=timezone.now()
            )
        except (model.DoesNotExist, SuspiciousOperation) as exc:
            if isinstance(exc, SuspiciousOperation):
                logging.getLogger(f"django.security.{type(exc).__name__}").warning(str(exc))
            self._session_key = None
            return None
        self.prefetched_user = session.user
        return session

    @classmethod
    def get_model_class(cls) -> Any:
        from accounts.models import Session

        return Session

    def save(self, must_create: bool = False) -> None:
        """Like Django's, but an update touches only the fields that change, so the
        creation time and the client recorded at sign-in survive."""
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)  # type: ignore[attr-defined]
        fields: dict[str, Any] = {
            "session_data": self.encode(data),
            "expire_date": self.get_expiry_date(),
            "user_id": data.get(SESSION_KEY),
            "last_seen_at": timezone.now(),
        }
        if self.client_ip:
            fields["ip_address"] = self.client_ip
        if self.user_agent:
            fields["user_agent"] = self.user_agent[:500]
        using = router.db_for_write(self.model)
        if must_create:
            assert self._session_key is not None
            try:
                with transaction.atomic(using=using):
                    self.model.objects.using(using).create(session_key=self._session_key, **fields)
            except IntegrityError as exc:
                raise CreateError from exc
            return None
        try:
            with transaction.atomic(using=using):
                updated = (
                    self.model.objects.using(using)
                    .filter(session_key=self._session_key)
                    .update(**fields)
                )
        except DatabaseError as exc:
            raise UpdateError from exc
        if not updated:
            raise UpdateError
        return None
