"""Starts the django-oauth-toolkit test provider on 127.0.0.1:DOT_PORT.

A fresh instance in DOT_DATA (a folder of the test's own): an RSA signing key, a SQLite DB
made by `migrate`, the user DOT_USER (password DOT_PASSWORD) and the confidential client
DOT_CLIENT_ID / DOT_CLIENT_SECRET (authorization code, RS256 ID tokens, redirect URI
DOT_REDIRECT_URI, post-logout redirect URI DOT_POST_LOGOUT_REDIRECT_URI), then Django's
threaded development server. Ready when /.well-known/openid-configuration answers.

    DOT_PORT=9000 DOT_DATA=/tmp/dot ... target/venv-dot/bin/python tests/providers/dot/serve.py
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dotsite.settings")

data = Path(os.environ["DOT_DATA"])
data.mkdir(parents=True, exist_ok=True)
key_file = data / "oidc.key"
if not key_file.exists():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

import django  # noqa: E402
from django.core.management import call_command  # noqa: E402

django.setup()
call_command("migrate", verbosity=0, interactive=False)

from django.contrib.auth import get_user_model  # noqa: E402
from oauth2_provider.models import get_application_model  # noqa: E402

User = get_user_model()
user, _ = User.objects.get_or_create(
    username=os.environ["DOT_USER"],
    defaults={"email": f"{os.environ['DOT_USER']}@example.com", "first_name": "Test"},
)
user.set_password(os.environ["DOT_PASSWORD"])
user.save()

Application = get_application_model()
if not Application.objects.filter(client_id=os.environ["DOT_CLIENT_ID"]).exists():
    Application.objects.create(
        name="Portcullis",
        client_id=os.environ["DOT_CLIENT_ID"],
        client_secret=os.environ["DOT_CLIENT_SECRET"],
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=os.environ["DOT_REDIRECT_URI"],
        post_logout_redirect_uris=os.environ["DOT_POST_LOGOUT_REDIRECT_URI"],
        algorithm=Application.RS256_ALGORITHM,
        skip_authorization=False,
    )

call_command(
    "runserver", f"127.0.0.1:{os.environ['DOT_PORT']}", use_reloader=False, use_threading=True
)
