"""Palaver settings: everything that varies between machines comes from the environment."""

import ipaddress
from typing import Any

from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse_lazy

from config import embedded
from config.env import BASE_DIR, env, networks, setting

DEBUG: bool = setting("DEBUG", cast=bool, default=False)
SECRET_KEY: str = setting("SECRET_KEY")
ALLOWED_HOSTS: list[str] = setting("ALLOWED_HOSTS", cast=list, default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS: list[str] = setting("CSRF_TRUSTED_ORIGINS", cast=list, default=[])

# Fernet keys, newest first: the first encrypts, all of them decrypt (see core/crypto.py).
SECRET_ENCRYPTION_KEYS: list[str] = setting("SECRET_ENCRYPTION_KEYS", cast=list)

# --- database: one PostgreSQL, a schema per account (django-tenants) ---------------------------
_database_url = setting("DATABASE_URL", default="") or embedded.postgres_url()
try:
    _db: dict[str, Any] = env.db_url_config(_database_url)
except Exception as exc:  # django-environ raises a bare exception on an unknown scheme
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"DATABASE_URL has a bad value: {exc}") from None
_db["ENGINE"] = "django_tenants.postgresql_backend"
_db["CONN_MAX_AGE"] = setting("DATABASE_CONN_MAX_AGE", cast=int, default=0)
_db["CONN_HEALTH_CHECKS"] = True
_db.setdefault("OPTIONS", {})["connect_timeout"] = 5
# PostgreSQL's JIT compiles any query whose estimate passes jit_above_cost, whatever it really
# costs: the chat sidebar's unread counts in an account of 1,000,000 lines ran 4 ms and
# compiled 16 ms (docs/benchmarks.md, "Issue 11: pages"). The web's queries are short; off
# unless DATABASE_JIT=true.
if not setting("DATABASE_JIT", cast=bool, default=False):
    _pg_options = str(_db["OPTIONS"].get("options") or "")
    _db["OPTIONS"]["options"] = f"{_pg_options} -c jit=off".strip()
# A pool of connections the process's requests take turns on (Django's psycopg pool). Under
# ASGI every request runs its sync code on a thread made for it, and Django keeps a connection
# per thread: DATABASE_CONN_MAX_AGE cannot carry one from a request to the next, so without a
# pool each request connects anew (~2.3 ms of the web's time, docs/benchmarks.md "Issue 11:
# pages"). config/asgi.py turns it on for the web; Celery's forked workers and the gateway keep
# their own connections. Each connection handed back is put back on the public schema and
# recycled after DATABASE_RECYCLE_AFTER_SCHEMAS account schemas (tenancy/db_memory.py).
DATABASE_POOL: bool = setting("DATABASE_POOL", cast=bool, default=False)
DATABASE_POOL_MAX_SIZE: int = setting("DATABASE_POOL_MAX_SIZE", cast=int, default=8)


def _reset_pooled_connection(raw_connection: Any) -> None:
    """The pool's `reset`, run on each connection handed back (imported late: the settings
    load before the apps)."""
    from tenancy.db_memory import reset_pooled_connection

    reset_pooled_connection(raw_connection)


if DATABASE_POOL:
    # Django refuses a pool with persistent connections. DATABASE_CONN_MAX_AGE is for the
    # processes without a pool (Celery's workers): under the pool it is ignored, so that a
    # deployment that set it for its workers still starts its web.
    _db["CONN_MAX_AGE"] = 0
    if DATABASE_POOL_MAX_SIZE < 1:
        raise ImproperlyConfigured("DATABASE_POOL_MAX_SIZE must be at least 1")
    # A new pooled connection starts on public, as the pool's reset leaves a returned one:
    # tenancy.middleware relies on it to skip django-tenants' first SET search_path.
    _db["OPTIONS"]["options"] = f"{_db['OPTIONS'].get('options') or ''} -c search_path=public"
    _db["OPTIONS"]["options"] = _db["OPTIONS"]["options"].strip()
    _db["OPTIONS"]["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_MAX_SIZE,
        # A request waits this long for a free connection, then fails (a 500), not forever.
        "timeout": 10,
        "reset": _reset_pooled_connection,
    }
_db["TEST"] = {"NAME": setting("TEST_DATABASE_NAME", default="test_palaver")}
DATABASES = {"default": _db}
DATABASE_ROUTERS = [
    "tenancy.routers.AccountSchemaRouter",
    "django_tenants.routers.TenantSyncRouter",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TENANT_MODEL = "accounts.Account"
# django-tenants re-issues SET search_path only when the schema changes.
TENANT_LIMIT_SET_CALLS = True
# Every set_tenant / set_schema is counted per connection, so that a long-lived connection is
# recycled before the catalog caches of the schemas it touched grow without bound
# (tenancy/db_memory.py; figures in docs/benchmarks.md, "Database memory").
EXTRA_SET_TENANT_METHOD_PATH = "tenancy.db_memory.note_tenant"
DATABASE_RECYCLE_AFTER_SCHEMAS: int = setting(
    "DATABASE_RECYCLE_AFTER_SCHEMAS", cast=int, default=500
)
DATABASE_RECYCLE_AFTER_BYTES: int = setting(
    "DATABASE_RECYCLE_AFTER_BYTES", cast=int, default=64 * 1024 * 1024
)
DATABASE_MEMORY_CHECK_SECONDS: float = setting(
    "DATABASE_MEMORY_CHECK_SECONDS", cast=float, default=5.0
)

# --- redis: cache (throttling), Celery broker ------------------------------------------------
# EMBEDDED_REDIS_PASSWORD: the embedded Redis's requirepass, read only when REDIS_URL is unset
# (`make .env` generates it). A Redis without a password is a target for anything that can be
# made to connect to loopback; config/checks.py warns about one named by REDIS_URL.
REDIS_URL: str = setting("REDIS_URL", default="") or embedded.redis_url(
    password=setting("EMBEDDED_REDIS_PASSWORD")
)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "palaver",
    }
}
# Prefix of the live-event and gateway-command pub/sub channels (channels_app/events.py): pub/sub
# ignores Redis database numbers, so deployments sharing one Redis need different prefixes.
REDIS_CHANNEL_PREFIX: str = setting("REDIS_CHANNEL_PREFIX", default="palaver")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Periodic tasks, run by `celery worker --beat` (scripts/run_all.py) or a separate `celery beat`.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # Each account's history retention: enqueues one prune per account that set one.
    "prune-history": {"task": "channels_app.prune_all_accounts", "schedule": 60 * 60},
    # Scheduled agent tasks: claims the due ones from the public index (scheduling), every 5 s.
    # Expired "Download my data" archives, found by listing the exports storage (no schema).
    "delete-expired-exports": {"task": "exports.delete_expired_exports", "schedule": 60 * 60},
    "agents-scheduler-tick": {
        "task": "agents.scheduler_tick",
        "schedule": 5.0,
        # A tick that waited longer than the next one is worthless: the next one does its work.
        "options": {"expires": 5.0},
    },
    # Scheduled backups: every 15 minutes (on the quarter hour), enqueues one backup per
    # account whose time of day has come (lifecycle/schedule.py spreads them over the day).
    "backups-tick": {
        "task": "lifecycle.schedule_backups",
        "schedule": crontab(minute="*/15"),
        "options": {"expires": 15 * 60},
    },
    # Backup retention over every account, purged ones included (theirs age out): daily.
    "prune-backups": {"task": "lifecycle.prune_backups", "schedule": crontab(hour=3, minute=7)},
    # Accounts whose deletion grace period is over: one purge task each (tenancy.tasks).
    "purge-deleted-accounts": {"task": "tenancy.purge_expired_accounts", "schedule": 60 * 60},
}
# Agent runs wait on LLM providers for seconds: they go to a queue of their own, served by a
# worker whose pool keeps many runs in flight (scripts/run_all.py), not behind short jobs.
CELERY_TASK_ROUTES = {"agents.run_task": {"queue": "agents"}}

# --- applications ------------------------------------------------------------------------------
SHARED_APPS = [
    "django_tenants",
    "core",
    "tenancy",
    "gateway",
    "accounts",
    "llms",
    "scheduling",
    "lifecycle",
    "django.contrib.postgres",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
TENANT_APPS = [
    "channels_app",
    "knowledge",
    "agents",
    # Link previews and uploaded files: both belong to one account, so they live (and go) with
    # its schema; a public upload link needs no lookup outside it (media/uploads.py).
    "media",
    # "Download my data": the archives' rows live (and go) with the account's schema.
    "exports",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "accounts.middleware.SessionMetadataMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    # Django's, with the session's user loaded with the session row (one query, not two).
    "accounts.middleware.AuthenticationMiddleware",
    "tenancy.middleware.AccountSchemaMiddleware",
    # An account pending deletion shows its users one page (accounts.views.deletion_pending).
    "accounts.middleware.PendingDeletionMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.theme_context",
            ],
            # `{% url %}` without arguments reversed once per process (every page's nav).
            "builtins": ["core.templatetags.url_cache"],
        },
    },
]

# --- identity ----------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["accounts.backends.EmailBackend"]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = reverse_lazy("accounts:sign_in")
LOGIN_REDIRECT_URL = reverse_lazy("dashboard")
LOGOUT_REDIRECT_URL = reverse_lazy("accounts:sign_in")

SESSION_ENGINE = "accounts.session_store"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE: bool = setting("SECURE_COOKIES", cast=bool, default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_AGE = 60 * 60 * 24 * 30
# How often a request refreshes its session's last-seen time.
SESSION_LAST_SEEN_INTERVAL = 300

# Days between a deletion request (the account page, `delete_account`) and the purge: the
# account's users may sign in and cancel until then, operators too (`cancel_account_deletion`).
ACCOUNT_DELETION_GRACE_DAYS: int = setting("ACCOUNT_DELETION_GRACE_DAYS", cast=int, default=30)
if ACCOUNT_DELETION_GRACE_DAYS < 0:
    raise ImproperlyConfigured("ACCOUNT_DELETION_GRACE_DAYS must be 0 or more days")

# --- authentication: throttling, client addresses, password reset email ----------------------
# Sign-in failures allowed per window: per (email, client) pair, so an attacker elsewhere cannot
# lock the real user out, and per client, so one client cannot guess across many emails.
# A client is its IP address, IPv6 grouped by /64 (accounts/throttle.py).
SIGN_IN_WINDOW_SECONDS: int = setting("SIGN_IN_WINDOW_SECONDS", cast=int, default=15 * 60)
SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT: int = setting(
    "SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT", cast=int, default=5
)
SIGN_IN_MAX_FAILURES_PER_CLIENT: int = setting(
    "SIGN_IN_MAX_FAILURES_PER_CLIENT", cast=int, default=20
)
# Every sign-up builds a schema: sign-up attempts allowed per client per window.
SIGN_UP_WINDOW_SECONDS: int = setting("SIGN_UP_WINDOW_SECONDS", cast=int, default=60 * 60)
SIGN_UP_MAX_PER_CLIENT: int = setting("SIGN_UP_MAX_PER_CLIENT", cast=int, default=5)
# Password reset requests allowed per window, per client and per email address.
PASSWORD_RESET_WINDOW_SECONDS: int = setting(
    "PASSWORD_RESET_WINDOW_SECONDS", cast=int, default=60 * 60
)
PASSWORD_RESET_MAX_PER_CLIENT: int = setting("PASSWORD_RESET_MAX_PER_CLIENT", cast=int, default=5)
PASSWORD_RESET_MAX_PER_EMAIL: int = setting("PASSWORD_RESET_MAX_PER_EMAIL", cast=int, default=3)
# How long a password reset link works (seconds); it also stops working once used.
PASSWORD_RESET_TIMEOUT: int = setting("PASSWORD_RESET_TIMEOUT", cast=int, default=60 * 60)


def _networks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(n, strict=False) for n in setting(name, cast=list, default=[])]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} has a bad value: {exc}") from None


# Proxies whose X-Forwarded-For is believed (addresses or networks). Empty: REMOTE_ADDR only,
# since anyone can send the header.
TRUSTED_PROXIES = _networks("TRUSTED_PROXIES")

# Outgoing email (password resets), as a URL: smtp://user:password@host:25, smtp+tls://...:587
# (STARTTLS), smtp+ssl://...:465, consolemail:// (print), dummymail:// (discard). Unset: printed
# under DEBUG; otherwise the local mail server on localhost:25, Django's and Unix's convention.
# Not the console there, which would log reset links, and not a drop, which would lock people
# out unnoticed: with no mail server the worker's send fails, retries and logs the error.
_email_url: str = setting("EMAIL_URL", default="") or (
    "consolemail://" if DEBUG else "smtp://localhost:25"
)
try:
    _email: dict[str, Any] = env.email_url_config(_email_url)
except Exception as exc:  # django-environ raises a bare exception on an unknown scheme
    raise ImproperlyConfigured(f"EMAIL_URL has a bad value: {exc}") from None
EMAIL_BACKEND: str = _email["EMAIL_BACKEND"]
EMAIL_HOST: str = _email["EMAIL_HOST"] or "localhost"
EMAIL_PORT: int = _email["EMAIL_PORT"] or 25
EMAIL_HOST_USER: str = _email["EMAIL_HOST_USER"] or ""
EMAIL_HOST_PASSWORD: str = _email["EMAIL_HOST_PASSWORD"] or ""
EMAIL_USE_TLS: bool = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL: bool = bool(_email.get("EMAIL_USE_SSL"))
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL: str = setting("DEFAULT_FROM_EMAIL", default="Palaver <palaver@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- outbound connections made for a user (core/net_policy.py, the one address policy) -------
# CIDR lists; denied beats allowed beats the built-in refusal of loopback, private, link-local,
# CGNAT, multicast and reserved addresses.
OUTBOUND_ALLOWED_NETWORKS: list[str] = setting(
    "OUTBOUND_ALLOWED_NETWORKS", cast=networks("OUTBOUND_ALLOWED_NETWORKS"), default=[]
)
OUTBOUND_DENIED_NETWORKS: list[str] = setting(
    "OUTBOUND_DENIED_NETWORKS", cast=networks("OUTBOUND_DENIED_NETWORKS"), default=[]
)

# --- sending from the web (LIMIT_CHANNELS_PER_SERVER, which the gateway also applies, is with
# the other limits below) -------------------------------------------------------------------------
# Lines (messages and commands) an account may send from the web per minute, all servers together.
LIMIT_MESSAGES_PER_MINUTE: int = setting("LIMIT_MESSAGES_PER_MINUTE", cast=int, default=120)

# --- IRC gateway: what one connection may cost, and how fast it talks ---------------------------
# Bounds on what a server can make the gateway hold for one connection (a hostile server sends
# endless NAMES, CAP LS or forced JOINs); beyond them the gateway refuses and says so.
GATEWAY_MAX_MEMBERS_PER_CHANNEL: int = setting(
    "GATEWAY_MAX_MEMBERS_PER_CHANNEL", cast=int, default=10_000
)
GATEWAY_MAX_CAPS: int = setting("GATEWAY_MAX_CAPS", cast=int, default=100)
# Lines read from one server per second, with a burst; past it the gateway reads slower
# (TCP backpressure), so one server cannot take the process' time from the others.
GATEWAY_MAX_LINES_PER_SECOND: float = setting(
    "GATEWAY_MAX_LINES_PER_SECOND", cast=float, default=500.0
)
GATEWAY_LINE_BURST: int = setting("GATEWAY_LINE_BURST", cast=int, default=5000)
# Flood protection for what the web sends (irssi's defaults: 5 at once, then one per 2.2 s).
GATEWAY_SEND_BURST: int = setting("GATEWAY_SEND_BURST", cast=int, default=5)
GATEWAY_SEND_INTERVAL_SECONDS: float = setting(
    "GATEWAY_SEND_INTERVAL_SECONDS", cast=float, default=2.2
)
GATEWAY_SEND_QUEUE_MAX: int = setting("GATEWAY_SEND_QUEUE_MAX", cast=int, default=200)
# Records one account may have waiting for the database; beyond it that account's oldest are
# dropped (and it is told), never another account's.
GATEWAY_MAX_PENDING_PER_ACCOUNT: int = setting(
    "GATEWAY_MAX_PENDING_PER_ACCOUNT", cast=int, default=200_000
)
# Writer threads of a gateway, each with its own database connection and its own accounts (an
# account always on the same one, so its lines commit in order): one connection spends most of
# its time waiting on PostgreSQL (docs/benchmarks.md, "Storing IRC lines").
GATEWAY_WRITERS: int = setting("GATEWAY_WRITERS", cast=int, default=2)
GATEWAY_RECONNECT_FIRST_SECONDS: float = setting(
    "GATEWAY_RECONNECT_FIRST_SECONDS", cast=float, default=2.0
)
GATEWAY_RECONNECT_MAX_SECONDS: float = setting(
    "GATEWAY_RECONNECT_MAX_SECONDS", cast=float, default=300.0
)
# Missed lines asked of a server offering IRCv3 draft/chathistory, per buffer and reconnection
# (gateway/chathistory.py): a long outage must not turn into a flood of its own.
GATEWAY_CHATHISTORY_MAX_LINES: int = setting(
    "GATEWAY_CHATHISTORY_MAX_LINES", cast=int, default=5000
)
# /list: the channels of a network kept for its page (the biggest ones when a network lists more:
# Libera.Chat lists 50,000+), and how long the list stays readable there (gateway/lists.py).
GATEWAY_LIST_MAX_CHANNELS: int = setting("GATEWAY_LIST_MAX_CHANNELS", cast=int, default=10_000)
GATEWAY_LIST_TTL_SECONDS: int = setting("GATEWAY_LIST_TTL_SECONDS", cast=int, default=3600)
# How often one kind of refusal is said in a server buffer (a flood is reported, not echoed).
GATEWAY_REFUSAL_NOTICE_SECONDS: float = setting(
    "GATEWAY_REFUSAL_NOTICE_SECONDS", cast=float, default=60.0
)
# The write-ahead journal (gateway/journal.py): what the gateway read survives its process.
# Each shard keeps its own under GATEWAY_JOURNAL_DIR/shard-K-of-N. Off only to measure its cost.
GATEWAY_JOURNAL: bool = setting("GATEWAY_JOURNAL", cast=bool, default=True)
GATEWAY_JOURNAL_DIR: str = setting("GATEWAY_JOURNAL_DIR", default=str(BASE_DIR / "var" / "journal"))

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

# --- i18n, static --------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"

# --- backups (lifecycle: the registry, the schedule, retention; docs in README "Backups") -----
# Scheduled backups go to the "backups" storage: by default the disk under BACKUP_DIR;
# BACKUP_STORAGE_BACKEND names another Django storage class. For an S3-compatible object store,
# `storages.backends.s3.S3Storage` (django-storages) with the BACKUP_S3_* settings below: a
# bucket of its own, private, never overwritten in place.
BACKUP_DIR: str = setting("BACKUP_DIR", default=str(BASE_DIR / "var" / "backups"))
BACKUP_STORAGE_BACKEND: str = setting(
    "BACKUP_STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage"
)
# The scheduled backups kept per account: the newest BACKUP_KEEP_DAILY (one a day), and among
# them or older, the newest BACKUP_KEEP_WEEKLY weekly ones (the first backup of each ISO week).
BACKUP_KEEP_DAILY: int = setting("BACKUP_KEEP_DAILY", cast=int, default=7)
BACKUP_KEEP_WEEKLY: int = setting("BACKUP_KEEP_WEEKLY", cast=int, default=4)
if BACKUP_KEEP_DAILY < 1 or BACKUP_KEEP_WEEKLY < 0:
    raise ImproperlyConfigured(
        "BACKUP_KEEP_DAILY must be at least 1 and BACKUP_KEEP_WEEKLY at least 0"
    )
# Off: the beat entry enqueues nothing (the commands still work).
BACKUP_SCHEDULE: bool = setting("BACKUP_SCHEDULE", cast=bool, default=True)


def _backup_storage_options() -> dict[str, Any]:
    if BACKUP_STORAGE_BACKEND.endswith("FileSystemStorage"):
        # No base_url: a backup is never served over HTTP.
        return {"location": BACKUP_DIR, "base_url": None}
    if BACKUP_STORAGE_BACKEND.endswith("s3.S3Storage"):
        options: dict[str, Any] = {
            "bucket_name": setting("BACKUP_S3_BUCKET"),
            "location": setting("BACKUP_S3_PREFIX", default="palaver-backups"),
            "endpoint_url": setting("BACKUP_S3_ENDPOINT_URL", default="") or None,
            "region_name": setting("BACKUP_S3_REGION", default="") or None,
            "access_key": setting("BACKUP_S3_ACCESS_KEY_ID", default="") or None,
            "secret_key": setting("BACKUP_S3_SECRET_ACCESS_KEY", default="") or None,
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
        }
        return options
    return {}


# Files people upload into the chat (media/uploads.py) go to the "uploads" storage: by default
# the disk under UPLOADS_DIR; UPLOADS_STORAGE_BACKEND names another Django storage class (an
# object store through django-storages, say), configured by its own settings.
UPLOADS_DIR: str = setting("UPLOADS_DIR", default=str(BASE_DIR / "var" / "uploads"))
_uploads_backend: str = setting(
    "UPLOADS_STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage"
)
# Exports of an account's data for its people (exports app): the disk under EXPORTS_DIR, or the
# storage class EXPORTS_STORAGE_BACKEND names.
EXPORTS_DIR: str = setting("EXPORTS_DIR", default=str(BASE_DIR / "var" / "exports"))
_exports_backend: str = setting(
    "EXPORTS_STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage"
)
# How long an export's download link works (seconds; 7 days): then its file is deleted.
EXPORT_LINK_TTL: int = setting("EXPORT_LINK_TTL", cast=int, default=7 * 24 * 3600)
# Lines of history read per query while exporting (a keyset batch).
EXPORT_BATCH_LINES: int = setting("EXPORT_BATCH_LINES", cast=int, default=5000)
# An export in progress that has not moved for this long (its worker died) no longer keeps
# the account from starting another.
EXPORT_STALL_SECONDS: int = setting("EXPORT_STALL_SECONDS", cast=int, default=900)
for _name, _value in (
    ("EXPORT_LINK_TTL", EXPORT_LINK_TTL),
    ("EXPORT_BATCH_LINES", EXPORT_BATCH_LINES),
    ("EXPORT_STALL_SECONDS", EXPORT_STALL_SECONDS),
):
    if _value < 1:
        raise ImproperlyConfigured(f"{_name} must be a positive whole number, not {_value}")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "backups": {"BACKEND": BACKUP_STORAGE_BACKEND, "OPTIONS": _backup_storage_options()},
    "uploads": {
        "BACKEND": _uploads_backend,
        "OPTIONS": (
            # Never MEDIA_URL: a file is served only by media.views.serve_upload, with the
            # headers that keep it from running as a page of this origin.
            {"location": UPLOADS_DIR, "base_url": None}
            if _uploads_backend.endswith("FileSystemStorage")
            else {}
        ),
    },
    # "Download my data" archives (exports/storage.py): served only by exports.views.download,
    # to the account's admins, until EXPORT_LINK_TTL has passed.
    "exports": {
        "BACKEND": _exports_backend,
        "OPTIONS": (
            {"location": EXPORTS_DIR, "base_url": None}
            if _exports_backend.endswith("FileSystemStorage")
            else {}
        ),
    },
}
WHITENOISE_USE_FINDERS = True


# Uploaded documents are read into the database, never kept on disk: the one upload handler
# keeps a file in memory and stops the upload as soon as it passes LIMIT_DOCUMENT_BYTES.
FILE_UPLOAD_HANDLERS = ["core.uploads.LimitedMemoryUploadHandler"]
DATA_UPLOAD_MAX_MEMORY_SIZE = 3 * 1024 * 1024

# --- limits an operator sets, per account or per user (see README) ----------------------------
# --- agents -------------------------------------------------------------------------------------
# Where people reach this deployment: links in what agents say (the full answer of a cut reply).
PUBLIC_URL: str = setting("PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")
# Tokens an account's agents may use per calendar month unless an operator set the account's
# own (accounts.Account.monthly_token_budget); 0 means no limit.
AGENT_MONTHLY_TOKEN_BUDGET: int = setting("AGENT_MONTHLY_TOKEN_BUDGET", cast=int, default=1_000_000)
# One model call may wait this long for the provider (connect, and between streamed chunks);
# the SDKs retry 429s, 5xx and timeouts AGENT_LLM_MAX_RETRIES times with backoff (Retry-After).
AGENT_LLM_TIMEOUT_SECONDS: float = setting("AGENT_LLM_TIMEOUT_SECONDS", cast=float, default=60.0)
AGENT_LLM_MAX_RETRIES: int = setting("AGENT_LLM_MAX_RETRIES", cast=int, default=2)
# Anthropic's API requires a cap on the answer's length; IRC answers are short.
AGENT_MAX_OUTPUT_TOKENS: int = setting("AGENT_MAX_OUTPUT_TOKENS", cast=int, default=1024)
# Runs in flight in one agents worker (a thread each: they mostly wait on providers). A worker
# completes at most this many runs per provider-second: 100 runs/s against a provider taking
# 1 s needs more than 100 (benchmarks/agent_runs.py: 74 runs/s with 100, 96 with 200).
# Database connections stay AGENT_DB_CONNECTIONS whatever this is.
AGENT_WORKER_CONCURRENCY: int = setting("AGENT_WORKER_CONCURRENCY", cast=int, default=200)
# Database connections one agents worker process holds: its runs hand their database work to
# this many threads, each with one connection (agents/runner/db.py).
AGENT_DB_CONNECTIONS: int = setting("AGENT_DB_CONNECTIONS", cast=int, default=10)
# tenant-schemas-celery looks the task's account up before every task; cached for this long,
# a run's thread does not open a database connection before the runner's bound applies.
CELERY_TASK_TENANT_CACHE_SECONDS: int = setting(
    "CELERY_TASK_TENANT_CACHE_SECONDS", cast=int, default=60
)
# --- link previews (media/previews.py) -----------------------------------------------------------
# One page (and, apart, its image) must arrive within this time and size; what does not gets
# no preview. A preview is kept this long, a failure for LINK_PREVIEW_FAILURE_SECONDS.
LINK_PREVIEW_TIMEOUT_SECONDS: float = setting(
    "LINK_PREVIEW_TIMEOUT_SECONDS", cast=float, default=8.0
)
LINK_PREVIEW_MAX_PAGE_BYTES: int = setting(
    "LINK_PREVIEW_MAX_PAGE_BYTES", cast=int, default=512 * 1024
)
LINK_PREVIEW_MAX_IMAGE_BYTES: int = setting(
    "LINK_PREVIEW_MAX_IMAGE_BYTES", cast=int, default=3 * 1024 * 1024
)
LINK_PREVIEW_CACHE_SECONDS: int = setting(
    "LINK_PREVIEW_CACHE_SECONDS", cast=int, default=24 * 60 * 60
)
LINK_PREVIEW_FAILURE_SECONDS: int = setting(
    "LINK_PREVIEW_FAILURE_SECONDS", cast=int, default=10 * 60
)
# Where the links to uploaded files point (PUBLIC_URL unless set): another host name of this
# deployment keeps what people upload off the origin that holds their sessions.
UPLOADS_PUBLIC_URL: str = (setting("UPLOADS_PUBLIC_URL", default="") or PUBLIC_URL).rstrip("/")
# --- knowledge: embeddings (knowledge/vectors.py) ---------------------------------------------
# Passages sent in one /embeddings request while a document is indexed.
KNOWLEDGE_EMBEDDING_BATCH_SIZE: int = setting(
    "KNOWLEDGE_EMBEDDING_BATCH_SIZE", cast=int, default=64
)
# One indexing request's wait (retried AGENT_LLM_MAX_RETRIES times, as model calls are).
KNOWLEDGE_EMBEDDING_TIMEOUT_SECONDS: float = setting(
    "KNOWLEDGE_EMBEDDING_TIMEOUT_SECONDS", cast=float, default=60.0
)
# A search embeds its query once, not retried: past this, it searches by full text alone.
KNOWLEDGE_QUERY_EMBEDDING_TIMEOUT_SECONDS: float = setting(
    "KNOWLEDGE_QUERY_EMBEDDING_TIMEOUT_SECONDS", cast=float, default=5.0
)

LIMIT_SERVERS_PER_ACCOUNT: int = setting("LIMIT_SERVERS_PER_ACCOUNT", cast=int, default=20)
LIMIT_CHANNELS_PER_SERVER: int = setting("LIMIT_CHANNELS_PER_SERVER", cast=int, default=100)
LIMIT_KNOWLEDGE_BASES_PER_ACCOUNT: int = setting(
    "LIMIT_KNOWLEDGE_BASES_PER_ACCOUNT", cast=int, default=20
)
LIMIT_DOCUMENTS_PER_ACCOUNT: int = setting("LIMIT_DOCUMENTS_PER_ACCOUNT", cast=int, default=1000)
LIMIT_DOCUMENT_BYTES: int = setting("LIMIT_DOCUMENT_BYTES", cast=int, default=1024 * 1024)
LIMIT_DOCUMENTS_TOTAL_BYTES: int = setting(
    "LIMIT_DOCUMENTS_TOTAL_BYTES", cast=int, default=100 * 1024 * 1024
)
# Passages one document may make (about 1,200 characters each): past it, indexing fails and says
# so, rather than one document crowding out the account's others.
LIMIT_CHUNKS_PER_DOCUMENT: int = setting("LIMIT_CHUNKS_PER_DOCUMENT", cast=int, default=5000)
# Files uploaded into the chat (media/uploads.py): one file's size, and all of an account's.
LIMIT_UPLOAD_BYTES: int = setting("LIMIT_UPLOAD_BYTES", cast=int, default=10 * 1024 * 1024)
LIMIT_UPLOADS_TOTAL_BYTES: int = setting(
    "LIMIT_UPLOADS_TOTAL_BYTES", cast=int, default=200 * 1024 * 1024
)
LIMIT_UPLOADS_PER_ACCOUNT: int = setting("LIMIT_UPLOADS_PER_ACCOUNT", cast=int, default=1000)
# Links a worker fetches a preview for, per account and minute (links already cached do not
# count); past it, a link goes without a preview.
LIMIT_LINK_PREVIEWS_PER_MINUTE: int = setting(
    "LIMIT_LINK_PREVIEWS_PER_MINUTE", cast=int, default=30
)
LIMIT_SSE_STREAMS_PER_USER: int = setting("LIMIT_SSE_STREAMS_PER_USER", cast=int, default=10)
# How a web process listens for live events (channels_app/live_fanout.py): "channels", one
# SUBSCRIBE per account with a stream open here, or "pattern", one PSUBSCRIBE to all accounts
# (cheaper only with a single web process: see docs/benchmarks.md).
LIVE_FANOUT_MODE: str = setting("LIVE_FANOUT_MODE", default="channels")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": setting("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # The HTTP clients under the LLM SDKs and the fetch tool log every request's URL at
        # INFO: pages agents fetch for a user (their query strings included) stay out of logs.
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
