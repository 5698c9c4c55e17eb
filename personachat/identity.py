"""Who "the user" is: a signed anonymous cookie, or an API key.

- `Authorization: Bearer <key>` wins, and a wrong key is a 401 even when a valid cookie
  comes along: a script with a typo in its key must not quietly act as someone else.
- Otherwise the identity cookie, signed with SECRET_KEY (itsdangerous). A tampered or
  foreign-signed cookie counts as no cookie.
- Otherwise, if ALLOW_ANONYMOUS, a new anonymous user id; the cookie that carries it is set
  on the response by the service's middleware (`web.middleware`) (it also works for streaming responses).
  Minting is limited per client address (ANON_IDENTITIES_PER_MINUTE, `store.limits`), so
  dropping the cookie does not buy a fresh set of per-user limits. IPv6 clients count per
  /64, the block one subscriber usually holds.
- A valid cookie is never replaced: a request that carries one keeps it.
- With ALLOW_ANONYMOUS=false, cookies issued earlier are refused too (401): turning
  anonymous use off must not leave the identities already handed out working.
- A `user_id` query parameter is never read.

API keys are stored as their SHA-256 only; the key itself is shown once, at creation.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer
from starlette.requests import HTTPConnection

from personachat.errors import InvalidApiKey, NotAuthenticated
from personachat.store.api_keys import ApiKeyStore
from personachat.store.keys import is_user_id
from personachat.store.limits import IdentityLimits

NEW_COOKIE = "identity_cookie"  # scope["state"] key: the signed value of a new identity


@dataclass(frozen=True)
class Identity:
    user_id: str
    kind: str  # "anonymous" or "api_key"


class IdentityResolver:
    def __init__(
        self,
        secret_key: str,
        api_keys: ApiKeyStore,
        *,
        cookie_name: str,
        allow_anonymous: bool,
        limits: IdentityLimits | None = None,
    ) -> None:
        self._signer = Signer(secret_key, salt="personachat.identity")
        self._api_keys = api_keys
        self._limits = limits
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
        if not self._allow_anonymous:
            raise NotAuthenticated()
        cookie = connection.cookies.get(self.cookie_name)
        if cookie:
            user = self._unsign(cookie)
            if user is not None:
                return Identity(user, "anonymous")
        if self._limits is not None:
            await self._limits.count_anonymous(client_bucket(connection.client.host if connection.client else None))
        user = "anon-" + secrets.token_hex(16)
        connection.scope.setdefault("state", {})[NEW_COOKIE] = self._signer.sign(user).decode()
        return Identity(user, "anonymous")

    def _unsign(self, cookie: str) -> str | None:
        try:
            user = self._signer.unsign(cookie).decode()
        except BadSignature:
            return None
        return user if is_user_id(user) else None


def client_bucket(host: str | None) -> str:
    """What anonymous identities are counted by: the client's IP address; for IPv6, its /64."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return "other"  # a Unix socket, or a test transport
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False).network_address) + "/64"
    return str(address)
