"""Django's database session engine, on our Session model, recording who, from where, and when."""

import logging
import weakref
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.core.exceptions import SuspiciousOperation
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.query import get_related_populators  # type: ignore[attr-defined]
from django.utils import timezone

# Stand-ins the session query is compiled with, found again among its parameters to learn
# where the real session key and time go.
_KEY_STANDIN = "\x00session-key"
_NOW_STANDIN = datetime(2000, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class _SessionQuery:
    """The session row with its user and account (`select_related("user__account")`), compiled
    once per database connection wrapper instead of on every request.

    The ORM builds and compiles this query anew for each signed-in request: about a quarter of
    the CPU an empty signed-in request costs (docs/benchmarks.md, "The signed-in request's
    fixed cost"). Only its two parameters change, so the SQL, the column converters and the
    row-to-instances plan are kept, and each request executes the SQL through the connection's
    cursor (django-tenants sets the search_path; query capture in tests still sees it) and
    builds the instances as the ORM's ModelIterable does."""

    def __init__(self, model: Any, connection: BaseDatabaseWrapper) -> None:
        queryset = model.objects.using(connection.alias).select_related("user__account")
        queryset = queryset.filter(session_key=_KEY_STANDIN, expire_date__gt=_NOW_STANDIN)
        compiler = queryset.query.get_compiler(using=connection.alias)
        self.sql, params = compiler.as_sql()
        standins = [_KEY_STANDIN, _NOW_STANDIN]
        if sorted(map(str, params)) != sorted(map(str, standins)):
            raise RuntimeError(f"unexpected session query parameters: {params!r}")
        self.order = [standins.index(p) if p in standins else -1 for p in params]
        if -1 in self.order:
            raise RuntimeError(f"unexpected session query parameters: {params!r}")
        self.alias = connection.alias
        self.compiler = compiler
        klass_info = compiler.klass_info
        assert klass_info is not None
        self.model = klass_info["model"]
        fields = klass_info["select_fields"]
        self.start, self.end = fields[0], fields[-1] + 1
        self.init_list = [f[0].target.attname for f in compiler.select[self.start : self.end]]
        self.populators = get_related_populators(klass_info, compiler.select, connection.alias)
        columns = [s[0] for s in compiler.select[: compiler.col_count]]
        self.converters = compiler.get_converters(columns)

    def get(self, connection: BaseDatabaseWrapper, session_key: str, now: datetime) -> Any:
        """The session (its user and account loaded), or None."""
        values: list[Any] = [session_key, now]
        with connection.cursor() as cursor:
            cursor.execute(self.sql, [values[i] for i in self.order])
            row = cursor.fetchone()
        if row is None:
            return None
        if self.converters:
            row = next(iter(self.compiler.apply_converters([row], self.converters)))
        session = self.model.from_db(self.alias, self.init_list, row[self.start : self.end])
        for populator in self.populators:
            populator.populate(row, session)
        return session


_session_queries: "weakref.WeakKeyDictionary[BaseDatabaseWrapper, _SessionQuery]" = (
    weakref.WeakKeyDictionary()
)


def _session_query(model: Any, connection: BaseDatabaseWrapper) -> _SessionQuery:
    query = _session_queries.get(connection)
    if query is None:
        query = _session_queries[connection] = _SessionQuery(model, connection)
    return query


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
        connection = connections[router.db_for_read(model)]
        try:
            session = _session_query(model, connection).get(
                connection, str(self.session_key), timezone.now()
            )
        except SuspiciousOperation as exc:
            logging.getLogger(f"django.security.{type(exc).__name__}").warning(str(exc))
            session = None
        if session is None:
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
