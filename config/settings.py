"""Palaver settings: everything that varies between machines comes from the environment."""

from typing import Any

from django.urls import reverse_lazy

from config import embedded
from config.env import BASE_DIR, env, setting

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
}

# --- applications ------------------------------------------------------------------------------
SHARED_APPS = [
    "django_tenants",
    "core",
    "tenancy",
    "gateway",
    "accounts",
    "llms",
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
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "accounts.middleware.SessionMetadataMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenancy.middleware.AccountSchemaMiddleware",
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
            ],
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

# Sign-in throttling: failures allowed per window, per email address and per client address.
SIGN_IN_WINDOW_SECONDS: int = setting("SIGN_IN_WINDOW_SECONDS", cast=int, default=15 * 60)
SIGN_IN_MAX_FAILURES_PER_EMAIL: int = setting("SIGN_IN_MAX_FAILURES_PER_EMAIL", cast=int, default=5)
SIGN_IN_MAX_FAILURES_PER_IP: int = setting("SIGN_IN_MAX_FAILURES_PER_IP", cast=int, default=20)

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
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# Uploaded documents are read into the database, never kept on disk.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 3 * 1024 * 1024
KNOWLEDGE_MAX_DOCUMENT_BYTES = 1024 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": setting("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
