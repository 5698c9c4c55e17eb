"""The services a request can use, built once in the app's lifespan, and their typed dependencies.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in the thread pool,
which costs a thread hop per request and makes the workers contend with the event loop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from config import Settings
from personachat.errors import NotAuthenticated
from personachat.identity import Identity, IdentityResolver
from personachat.llm import Models
from personachat.personas import PersonaResolver
from personachat.readers import TurnReaders
from personachat.store.api_keys import ApiKeyStore
from personachat.store.client import Redis
from personachat.store.history import HistoryStore
from personachat.store.keys import KeySpace
from personachat.store.maintenance import Maintenance
from personachat.store.search import SessionSearch
from personachat.store.usage import UsageStore
from personachat.turns import TurnService


@dataclass
class Services:
    settings: Settings
    redis: Redis
    store: HistoryStore
    turns: TurnService
    readers: TurnReaders
    api_keys: ApiKeyStore
    identity: IdentityResolver
    personas: PersonaResolver
    models: Models | None = None  # set by the lifespan (models and providers)
    open_sockets: Counter[str] = field(default_factory=Counter)  # WebSockets open per user, here
    usage: UsageStore | None = None


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# FastAPI resolves ServicesDep once per request, however many dependencies below use it.
ServicesDep = Annotated[Services, Depends(get_services)]


async def get_identity(request: Request, services: ServicesDep) -> Identity:
    return await services.identity.resolve(request)


# Documents the key in the OpenAPI schema (the /docs "Authorize" button); the identity
# resolver reads the header itself.
api_key_scheme = HTTPBearer(auto_error=False, scheme_name="ApiKey", description="An API key (`chatctl keys create`).")


async def get_api_key_identity(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_key_scheme)],
) -> Identity:
    """An API key's identity, and nothing else: no cookie is read, none is minted (401 without a key)."""
    if "authorization" not in request.headers:
        raise NotAuthenticated()
    return await services.identity.resolve(request)  # a wrong key, or not Bearer: 401


async def get_store(services: ServicesDep) -> HistoryStore:
    return services.store


async def get_turns(services: ServicesDep) -> TurnService:
    return services.turns


async def get_readers(services: ServicesDep) -> TurnReaders:
    return services.readers


async def get_personas(services: ServicesDep) -> PersonaResolver:
    return services.personas


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings  # set by create_app, before the lifespan runs
    return settings


async def get_maintenance(services: ServicesDep) -> Maintenance:
    keys = KeySpace(services.settings.redis_prefix)
    return Maintenance(services.redis, keys, history_ttl_seconds=services.settings.history_ttl_seconds)


async def get_search(services: ServicesDep) -> SessionSearch:
    return SessionSearch(services.redis, KeySpace(services.settings.redis_prefix))


async def get_models(services: ServicesDep) -> Models:
    assert services.models is not None  # the lifespan sets it
    return services.models


async def get_usage(services: ServicesDep) -> UsageStore:
    assert services.usage is not None  # the lifespan sets it
    return services.usage


IdentityDep = Annotated[Identity, Depends(get_identity)]
ApiKeyIdentityDep = Annotated[Identity, Depends(get_api_key_identity)]
StoreDep = Annotated[HistoryStore, Depends(get_store)]
TurnsDep = Annotated[TurnService, Depends(get_turns)]
ReadersDep = Annotated[TurnReaders, Depends(get_readers)]
PersonasDep = Annotated[PersonaResolver, Depends(get_personas)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MaintenanceDep = Annotated[Maintenance, Depends(get_maintenance)]
SearchDep = Annotated[SessionSearch, Depends(get_search)]


ModelsDep = Annotated[Models, Depends(get_models)]
UsageDep = Annotated[UsageStore, Depends(get_usage)]
