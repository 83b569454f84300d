"""Token administration (admins of a tenant manage that tenant's tokens) and whoami.

Tokens are shown once, in the answer that creates them. Operators with access to the
server's stores can also manage tokens of any tenant from the command line:
`python -m aob.platform.auth --help`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from aob.platform.auth.authenticator import Authenticator
from aob.platform.auth.http import principal_of
from aob.platform.auth.principal import Principal
from aob.platform.problems import Problem, not_found

router = APIRouter(prefix="/api/v1", tags=["admin"])


def get_principal(request: Request) -> Principal:
    return principal_of(request)


def get_authenticator(request: Request) -> Authenticator:
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


@router.get("/whoami", summary="The caller as authenticated")
async def whoami(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "name": principal.name,
        "roles": sorted(principal.roles),
        "tenant": principal.tenant,
        "via": principal.via,
    }


@router.post("/admin/tokens", status_code=201, summary="Create an API token (shown once)")
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


@router.get("/admin/tokens", summary="The tenant's tokens (never their secrets)")
async def list_tokens(principal: PrincipalDep, authenticator: AuthenticatorDep) -> dict[str, Any]:
    records = await authenticator.listing(principal.tenant)
    return {"items": [record.public() for record in records]}


@router.delete("/admin/tokens/{token_id}", summary="Revoke a token")
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
