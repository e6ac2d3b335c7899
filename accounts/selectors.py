from typing import Any

from django.db import connection
from django.db.models import QuerySet

from accounts.models import Account, Session, User


def active_sessions(*, user: User) -> QuerySet[Session]:
    from django.utils import timezone

    return Session.objects.filter(user=user, expire_date__gt=timezone.now()).order_by(
        "-last_seen_at"
    )


def count_many(**querysets: QuerySet[Any]) -> dict[str, int]:
    """`qs.count()` of each queryset, in one query (one round trip and one trip through the
    ORM instead of one per count: the dashboard's seven counts cost more than its template).
    The querysets keep their filters exactly; their tables are found on the search_path, so
    account tables must be read inside the account's schema, as for count()."""
    parts: list[str] = []
    params: list[Any] = []
    names = list(querysets)
    for i, name in enumerate(names):
        qs = querysets[name].order_by().values("pk")
        sql, qs_params = qs.query.get_compiler(using=qs.db).as_sql()
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) AS count_{i})")
        params.extend(qs_params)
    if not parts:
        return {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        row = cursor.fetchone()
    return {name: int(value) for name, value in zip(names, row, strict=True)}


def account_admin_emails(*, account: Account) -> list[str]:
    """Who a member of the account can ask (the deletion page names them)."""
    admins = User.objects.filter(account=account, is_account_admin=True, is_active=True)
    return list(admins.values_list("email", flat=True))
