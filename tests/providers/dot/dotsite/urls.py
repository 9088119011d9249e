from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

urlpatterns = [
    # DOT at the root: issuer http://localhost:PORT, RFC 8414 metadata at
    # /.well-known/oauth-authorization-server, OIDC discovery beside it.
    path("", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    # Test-only: what the provider's database says about the refresh tokens.
    path("test/refresh-tokens", views.refresh_tokens),
]
