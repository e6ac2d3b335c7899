from django.db.models import QuerySet

from accounts.models import Session, User


def active_sessions(*, user: User) -> QuerySet[Session]:
    from django.utils import timezone

    return Session.objects.filter(user=user, expire_date__gt=timezone.now()).order_by(
        "-last_seen_at"
    )
