"""Test-only views: let the test read the provider's token table."""

from django.http import JsonResponse
from oauth2_provider.models import get_refresh_token_model


def refresh_tokens(request):
    """Every refresh token the provider issued to `client_id`, oldest first:
    `{"refresh_tokens": [{"token": …, "revoked": bool}, …]}`."""
    tokens = (
        get_refresh_token_model()
        .objects.filter(application__client_id=request.GET.get("client_id", ""))
        .order_by("id")
    )
    return JsonResponse(
        {"refresh_tokens": [{"token": t.token, "revoked": t.revoked is not None} for t in tokens]}
    )
