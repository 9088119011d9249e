"""A django-oauth-toolkit OpenID provider for Portcullis's end-to-end tests.

Everything instance-specific comes from the environment (set by serve.py):
DOT_PORT, DOT_DATA (a folder for the SQLite DB and the RSA key), DOT_ACCESS_TOKEN_TTL.
Test-only: DEBUG off, a throwaway SECRET_KEY, plain HTTP on loopback.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
DATA = Path(os.environ["DOT_DATA"])
PORT = int(os.environ["DOT_PORT"])

SECRET_KEY = os.environ.get("DOT_SECRET_KEY", "test-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
ROOT_URLCONF = "dotsite.urls"
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
    "dotsite",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA / "dot.sqlite3",
        # Several threads of runserver write (token rotation): wait for the lock.
        "OPTIONS": {"timeout": 20},
    }
}

LOGIN_URL = "/accounts/login/"
# The provider's own site: its session cookie must not collide with Portcullis's
# (both on loopback, cookies don't care about ports).
SESSION_COOKIE_NAME = "dot_sessionid"
CSRF_COOKIE_NAME = "dot_csrftoken"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "oauth2_provider": {"handlers": ["stderr"], "level": "WARNING"},
        "django.security": {"handlers": ["stderr"], "level": "WARNING"},
    },
}

OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": (DATA / "oidc.key").read_text(),
    # The provider lives on `localhost`, Portcullis on `127.0.0.1`: two sites.
    "OIDC_ISS_ENDPOINT": f"http://localhost:{PORT}",
    "PKCE_REQUIRED": True,
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
    "OIDC_RP_INITIATED_LOGOUT_ALWAYS_PROMPT": False,
    # Short-lived access tokens, so that the test crosses refreshes.
    "ACCESS_TOKEN_EXPIRE_SECONDS": int(os.environ.get("DOT_ACCESS_TOKEN_TTL", "300")),
    "SCOPES": {
        "openid": "OpenID Connect",
        "profile": "Your profile",
        "email": "Your email address",
    },
    "DEFAULT_SCOPES": ["openid"],
    "REQUEST_APPROVAL_PROMPT": "auto",
    "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
    "ALLOWED_SCHEMES": ["http", "https"],
    "OAUTH2_VALIDATOR_CLASS": "dotsite.validator.Validator",
}
