"""Who "the user" is: a signed anonymous cookie, or an API key.

- `Authorization: Bearer <key>` wins, and a wrong key is a 401 even when a valid cookie
  comes along: a script with a typo in its key must not quietly act as someone else.
- Otherwise the identity cookie, signed with SECRET_KEY (itsdangerous). A tampered or
  foreign-signed cookie counts as no cookie.
- Otherwise, if ALLOW_ANONYMOUS, a new anonymous user id; the cookie that carries it is set
  on the response by `IdentityCookieMiddleware` (it also works for streaming responses).
- A `user_id` query parameter is never read.

API keys are stored as their SHA-256 only; the key itself is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personachat.errors import InvalidApiKey, NotAuthenticated
from personachat.history import now_iso
from personachat.keyspace import KeySpace, is_user_id
from personachat.redisconn import Redis, translate_redis_errors

API_KEY_PREFIX = "pck_"
_NEW_COOKIE = "identity_cookie"


@dataclass(frozen=True)
class Identity:
    user_id: str
    kind: str  # "anonymous" or "api_key"


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str
    user_id: str
    label: str
    created_at: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """API keys in Redis, by hash: create, look up, list and revoke."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        self._redis = redis
        self._keys = keys

    @translate_redis_errors
    async def create(self, user_id: str, label: str = "") -> tuple[str, ApiKeyInfo]:
        """A new key for `user_id`; the key is returned once and never stored."""
        if not is_user_id(user_id):
            raise ValueError("user ids are 1-64 letters, digits, '_', '.', '@' or '-'")
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        info = ApiKeyInfo(key_id=secrets.token_hex(6), user_id=user_id, label=label, created_at=now_iso())
        digest = _hash(key)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._keys.api_key(digest), mapping=info.__dict__)
            pipe.hset(self._keys.api_key_index(), info.key_id, digest)
            await pipe.execute()
        return key, info

    @translate_redis_errors
    async def user_for(self, key: str) -> str | None:
        user = await self._redis.hget(self._keys.api_key(_hash(key)), "user_id")
        return user.decode() if user else None

    @translate_redis_errors
    async def list(self) -> list[ApiKeyInfo]:
        digests = await self._redis.hgetall(self._keys.api_key_index())
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest in digests.values():
                pipe.hgetall(self._keys.api_key(digest.decode()))
            replies = await pipe.execute()
        return sorted(
            (ApiKeyInfo(**{k.decode(): v.decode() for k, v in reply.items()}) for reply in replies if reply),
            key=lambda info: info.created_at,
        )

    @translate_redis_errors
    async def revoke(self, key_id: str) -> bool:
        digest = await self._redis.hget(self._keys.api_key_index(), key_id)
        if digest is None:
            return False
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._keys.api_key(digest.decode()))
            pipe.hdel(self._keys.api_key_index(), key_id)
            await pipe.execute()
        return True


class IdentityResolver:
    def __init__(self, secret_key: str, api_keys: ApiKeyStore, *, cookie_name: str, allow_anonymous: bool) -> None:
        self._signer = Signer(secret_key, salt="personachat.identity")
        self._api_keys = api_keys
        self.cookie_name = cookie_name
        self._allow_anonymous = allow_anonymous

    async def resolve(self, connection: HTTPConnection) -> Identity:
        authorization = connection.headers.get("authorization")
        if authorization is not None:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise InvalidApiKey("Send the API key as 'Authorization: Bearer <key>'.")
            user = await self._api_keys.user_for(key.strip())
            if user is None:
                raise InvalidApiKey()
            return Identity(user, "api_key")
        cookie = connection.cookies.get(self.cookie_name)
        if cookie:
            user = self._unsign(cookie)
            if user is not None:
                return Identity(user, "anonymous")
        if not self._allow_anonymous:
            raise NotAuthenticated()
        user = "anon-" + secrets.token_hex(16)
        connection.scope.setdefault("state", {})[_NEW_COOKIE] = self._signer.sign(user).decode()
        return Identity(user, "anonymous")

    def _unsign(self, cookie: str) -> str | None:
        try:
            user = self._signer.unsign(cookie).decode()
        except BadSignature:
            return None
        return user if is_user_id(user) else None


class IdentityCookieMiddleware:
    """Sets the identity cookie on the response when the request was given a new identity.

    Pure ASGI (not BaseHTTPMiddleware) so that streaming responses pass straight through.
    """

    def __init__(self, app: ASGIApp, *, cookie_name: str, max_age: int) -> None:
        self.app = app
        self.cookie_name = cookie_name
        self.max_age = max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = scope.get("state", {}).get(_NEW_COOKIE)
                if value is not None:
                    headers = MutableHeaders(scope=message)
                    headers.append("set-cookie", self._cookie(scope, value))
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _cookie(self, scope: Scope, value: str) -> str:
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        return f"{self.cookie_name}={value}; Max-Age={self.max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"
