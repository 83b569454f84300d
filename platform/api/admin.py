"""Token administration (admins of a tenant manage that tenant's tokens), whoami, and
the dead letters (records the services set aside: inspect, replay).

Tokens are shown once, in the answer that creates them. Operators with access to the
server's stores can also manage tokens of any tenant from the command line:
`python -m aob.platform.auth --help`.
"""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from aob.events.codec import CodecError, decode, event_type
from aob.events.log.port import Record, UnknownTopic
from aob.events.types import DEADLETTER_TOPIC, RecordDeadLettered
from aob.platform.api.deps import CommandsDep, EngineDep
from aob.platform.auth.authenticator import Authenticator
from aob.platform.auth.http import principal_of, require
from aob.platform.auth.principal import DEFAULT_TENANT, Permission, Principal
from aob.platform.engine import Engine
from aob.platform.problems import Problem, not_found

router = APIRouter(prefix="/api/v1", tags=["admin"])


async def get_principal(request: Request) -> Principal:
    return principal_of(request)


async def get_authenticator(request: Request) -> Authenticator:
    security = getattr(request.app.state, "security", None)
    authenticator = getattr(security, "authenticator", None)
    if authenticator is None:
        raise Problem(
            409,
            "auth-off",
            "Authentication is off",
            "this server runs without authentication (AOB_AUTH=off): there are no tokens",
        )
    assert isinstance(authenticator, Authenticator)
    return authenticator


PrincipalDep = Annotated[Principal, Depends(get_principal)]
AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


class CreateToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="recorded as the actor")
    roles: list[str] = Field(min_length=1, max_length=32)
    tenant: str | None = Field(default=None, max_length=63, description="default: yours")
    expires_in_s: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)
    description: str = Field(default="", max_length=500)


@router.get(
    "/whoami", summary="The caller as authenticated", dependencies=[require(Permission.READ)]
)
async def whoami(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "name": principal.name,
        "roles": sorted(principal.roles),
        "tenant": principal.tenant,
        "via": principal.via,
    }


@router.post(
    "/admin/tokens",
    status_code=201,
    summary="Create an API token (shown once)",
    dependencies=[require(Permission.ADMIN)],
)
async def create_token(
    body: CreateToken, principal: PrincipalDep, authenticator: AuthenticatorDep
) -> JSONResponse:
    tenant = _own_tenant(principal, body.tenant)
    try:
        token, record = await authenticator.issue(
            body.name,
            tenant,
            body.roles,
            created_by=principal.name,
            expires_in_s=body.expires_in_s,
            description=body.description,
        )
    except ValueError as error:
        raise Problem(422, "invalid-token-request", "Invalid token request", str(error)) from None
    return JSONResponse({"token": token, **record.public()}, status_code=201)


@router.get(
    "/admin/tokens",
    summary="The tenant's tokens (never their secrets)",
    dependencies=[require(Permission.ADMIN)],
)
async def list_tokens(principal: PrincipalDep, authenticator: AuthenticatorDep) -> dict[str, Any]:
    records = await authenticator.listing(principal.tenant)
    return {"items": [record.public() for record in records]}


@router.delete(
    "/admin/tokens/{token_id}", summary="Revoke a token", dependencies=[require(Permission.ADMIN)]
)
async def revoke_token(
    token_id: str, principal: PrincipalDep, authenticator: AuthenticatorDep
) -> dict[str, Any]:
    record = await authenticator.revoke(token_id, principal.tenant)
    if record is None:
        raise not_found("token", token_id)
    return record.public()


def _own_tenant(principal: Principal, wanted: str | None) -> str:
    if wanted is not None and wanted != principal.tenant:
        raise Problem(
            403,
            "forbidden",
            "Not allowed",
            f"an admin of tenant {principal.tenant!r} manages only that tenant's tokens",
        )
    return principal.tenant


# --- dead letters -------------------------------------------------------------------------
# Records a service set aside (aob.projections.runtime.deadletter): an admin inspects
# them and, once a fix is deployed, replays one (its original bytes appended again to
# its source topic). A dead letter's id is its position on aob.deadletter,
# "<partition>-<offset>". Admins of the default tenant (the deployment's operators) see
# every dead letter; admins of another tenant only those of their own runs.

_LETTER_ID = re.compile(r"^(0|[1-9][0-9]{0,8})-(0|[1-9][0-9]{0,17})$")
_SCAN_BATCH = 500


class Replayed(BaseModel):
    id: str
    topic: str
    partition: int
    offset: int


@router.get(
    "/admin/deadletters",
    summary="Records the services set aside, oldest first",
    dependencies=[require(Permission.ADMIN)],
)
async def list_dead_letters(
    principal: PrincipalDep,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=40, description="next_cursor")] = None,
) -> dict[str, Any]:
    partition, offset = _position(cursor, "cursor") if cursor else (0, 0)
    items: list[dict[str, Any]] = []
    seen: set[str] = set()  # a record set aside again (after a crash) shows once a page
    partitions = await engine.log.partitions(DEADLETTER_TOPIC)
    while partition < partitions and len(items) < limit:
        records = await engine.log.read(DEADLETTER_TOPIC, partition, offset, _SCAN_BATCH)
        if not records:
            partition, offset = partition + 1, 0
            continue
        for record in records:
            offset = record.offset + 1
            item = _letter(record)
            if item["event_id"] in seen or not await _visible(engine, principal, item):
                continue
            seen.add(item["event_id"])
            items.append(item)
            if len(items) == limit:
                break
    more = partition < partitions and await _has_more(engine, partition, offset, partitions)
    return {"items": items, "next_cursor": f"{partition}-{offset}" if more else None}


@router.post(
    "/admin/deadletters/{letter_id}/replay",
    summary="Append a dead letter's original record to its source topic again",
    dependencies=[require(Permission.ADMIN)],
)
async def replay_dead_letter(
    letter_id: str, principal: PrincipalDep, engine: EngineDep, commands: CommandsDep
) -> Replayed:
    partition, offset = _position(letter_id, "dead letter id")
    records: list[Record] = []
    if partition < await engine.log.partitions(DEADLETTER_TOPIC):
        records = await engine.log.read(DEADLETTER_TOPIC, partition, offset, 1)
    if not records or records[0].offset != offset:
        raise not_found("dead letter", letter_id)
    item = _letter(records[0])
    if "source" not in item or not await _visible(engine, principal, item):
        raise not_found("dead letter", letter_id)
    source = item["source"]
    try:
        appended = await commands.requeue(
            source["topic"], source["key"], base64.b64decode(item["value_base64"])
        )
    except UnknownTopic:
        raise Problem(
            409, "unknown-topic", "Unknown topic", f"topic {source['topic']!r} does not exist"
        ) from None
    return Replayed(
        id=letter_id, topic=appended.topic, partition=appended.partition, offset=appended.offset
    )


def _position(text: str, what: str) -> tuple[int, int]:
    match = _LETTER_ID.match(text)
    if match is None:
        raise Problem(
            400, "invalid-request", "Invalid request", f"{what} must look like <partition>-<offset>"
        )
    return int(match[1]), int(match[2])


def _letter(record: Record) -> dict[str, Any]:
    """A dead-letter record as the API shows it."""
    item: dict[str, Any] = {"id": f"{record.partition}-{record.offset}"}
    try:
        event = decode(record.value)
    except CodecError as error:
        return {**item, "event_id": item["id"], "error": f"not a dead letter: {error}"}
    letter = event.payload
    if not isinstance(letter, RecordDeadLettered):
        return {**item, "event_id": event.event_id, "error": f"not a dead letter: {event.type}"}
    return {
        **item,
        "event_id": event.event_id,
        "dead_lettered_at": event.occurred_at,
        "service": letter.service,
        "reason": letter.reason,
        "run_id": letter.run_id,
        "type": event_type(letter.value),  # as the record's header says, if it has one
        "source": {
            "topic": letter.source_topic,
            "partition": letter.partition,
            "offset": letter.offset,
            "key": letter.key,
        },
        "size": len(letter.value),
        "value_base64": base64.b64encode(letter.value).decode(),
    }


async def _visible(engine: Engine, principal: Principal, item: dict[str, Any]) -> bool:
    if principal.tenant == DEFAULT_TENANT:
        return True
    run_id = item.get("run_id")
    run = await engine.read_models.get_run(run_id) if run_id else None
    return run is not None and run.get("tenant") == principal.tenant


async def _has_more(engine: Engine, partition: int, offset: int, partitions: int) -> bool:
    ends = await engine.log.end_offsets(DEADLETTER_TOPIC)
    return offset < ends.get(partition, 0) or any(
        ends.get(p, 0) > 0 for p in range(partition + 1, partitions)
    )
