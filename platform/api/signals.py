"""Signals: `POST /api/v1/runs/{run_id}/signals/{name}` records a named external event
on a run; a hitl node whose config lists the name in `signals` ends on it (now, or when
it starts: the lookback). The body is the signal's JSON payload."""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse

from aob.platform.api.deps import Actor, CommandsDep, TraceId
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission
from aob.platform.problems import Problem

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])

# A signal's payload is kept in the run's log and state: at most this many bytes of JSON.
MAX_SIGNAL_BYTES: Final = 64 * 1024
SIGNAL_NAME: Final = r"^[A-Za-z0-9_.-]{1,64}$"


@router.post(
    "/{run_id}/signals/{name}",
    summary="Send a signal to a run",
    responses={
        200: {"description": "Sent before with this Idempotency-Key: the first signal"},
        404: {"description": "No such run (or another tenant's)"},
        409: {"description": "The run is over, or holds as many signals as a run keeps"},
        413: {"description": "The payload is over 64 KiB"},
    },
    status_code=202,
    dependencies=[require(Permission.OPERATE)],
)
async def send_signal(
    run_id: str,
    name: Annotated[str, Path(pattern=SIGNAL_NAME)],
    request: Request,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    key: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONResponse:
    """The body is any JSON (empty: null). With a key (the Idempotency-Key header, or
    `?key=`), sending the same key again records nothing and answers 200 with the first
    signal."""
    payload = _payload(await _body(request))
    signal, new = await commands.send_signal(
        run_id, name, payload, key=idempotency_key or key, actor=actor, trace_id=trace_id
    )
    return JSONResponse({"run_id": run_id, **signal}, status_code=202 if new else 200)


async def _body(request: Request) -> bytes:
    """The request body, refused as soon as it is over the bound (never read whole)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SIGNAL_BYTES:
            raise Problem(
                413,
                "payload-too-large",
                "Signal payload too large",
                f"a signal's payload is at most {MAX_SIGNAL_BYTES} bytes of JSON",
                limit=MAX_SIGNAL_BYTES,
            )
    return bytes(body)


def _payload(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise Problem(
            422, "invalid-json", "Invalid signal payload", f"the body is not JSON: {error}"
        ) from None
