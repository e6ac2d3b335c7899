"""Django's database session engine, on our Session model, recording who, from where, and when."""

from typing import Any

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.db import DatabaseError, IntegrityError, router, transaction
from django.utils import timezone


class SessionStore(DBStore):
    # Set per request by accounts.middleware.SessionMetadataMiddleware.
    client_ip: str | None = None
    user_agent: str = ""

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
