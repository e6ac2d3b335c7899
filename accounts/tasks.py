"""Identity jobs. They work on the public schema: no account is involved."""

import smtplib

from accounts import services
from config.celery import app


@app.task(
    name="accounts.send_password_reset",
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=True,
    max_retries=5,
)
def send_password_reset(*, email: str, site_url: str) -> bool:
    return services.send_password_reset(email=email, site_url=site_url)
