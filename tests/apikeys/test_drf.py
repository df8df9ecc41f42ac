"""The DRF adapter: 401 without a valid key, 429 with Retry-After over the limit, request.auth is the Usage."""

from __future__ import annotations

import pytest
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from hotcache import apikeys
from hotcache.apikeys_drf import ApiKeyAuthentication, HasApiKey
from hotcache.testing import mongo_down


class _Things(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]
    renderer_classes = [JSONRenderer]

    def get(self, request):
        return Response({"key_id": request.auth.key_id, "used": request.auth.used_today})


def _get(**headers):
    return _Things.as_view()(APIRequestFactory().get("/things/", **headers))


def test_valid_key_is_authenticated():
    new = apikeys.create("alice")
    response = _get(HTTP_AUTHORIZATION=f"Api-Key {new.raw_key}")
    assert response.status_code == 200 and response.data == {"key_id": new.key_id, "used": 1}


@pytest.mark.parametrize("headers", [{}, {"HTTP_X_API_KEY": "nope"}, {"HTTP_AUTHORIZATION": "Api-Key " + "é" * 50}])
def test_missing_or_invalid_key_is_401(headers):
    response = _get(**headers)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Api-Key"


def test_over_limit_is_429_with_retry_after():
    new = apikeys.create("alice", daily_limit=1)
    assert _get(HTTP_X_API_KEY=new.raw_key).status_code == 200
    response = _get(HTTP_X_API_KEY=new.raw_key)
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1


def test_both_stores_down_is_503(redis_down):
    new = apikeys.create("alice")
    with mongo_down():
        assert _get(HTTP_X_API_KEY=new.raw_key).status_code == 503


def test_a_bearer_token_that_is_not_a_key_is_left_to_other_authenticators():
    from rest_framework.request import Request

    request = Request(APIRequestFactory().get("/things/", HTTP_AUTHORIZATION="Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"))
    assert ApiKeyAuthentication().authenticate(request) is None


def test_valid_key_as_a_bearer_token_is_authenticated():
    new = apikeys.create("alice")
    response = _get(HTTP_AUTHORIZATION=f"Bearer {new.raw_key}")
    assert response.status_code == 200 and response.data["key_id"] == new.key_id
