"""API tokens: issued once, stored as a hash, found by id, revoked, expired; the two
stores (SQLite, a real PostgreSQL) behave alike; the role table; the admin command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aob.platform.api.app import create_app
from aob.platform.auth import (
    ADMIN,
    APPROVER,
    OPERATOR,
    VIEWER,
    Authenticator,
    Permission,
    PostgresTokenStore,
    Principal,
    SqliteTokenStore,
    TokenStore,
    Unauthenticated,
    required_permission,
)
from aob.platform.auth.tokens import parse_token
from aob.platform.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    opened: TokenStore
    if request.param == "sqlite":
        opened = await SqliteTokenStore.open(tmp_path / "platform.db")
    else:
        opened = await PostgresTokenStore.open(request.getfixturevalue("postgres_schema"))
    yield opened
    await opened.close()


async def test_a_token_proves_its_principal_until_revoked(store: TokenStore) -> None:
    auth = Authenticator(store)
    token, record = await auth.issue("ann", "acme", [OPERATOR, "finance"], created_by="root")
    parsed = parse_token(token)
    assert parsed is not None
    assert parsed[0] == record.token_id
    assert parsed[1] not in record.secret_hash  # only a hash is kept
    principal = await auth.authenticate(token)
    assert principal == Principal("ann", frozenset({OPERATOR, "finance"}), "acme", "token")
    await auth.revoke(record.token_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.authenticate(token)


async def test_wrong_unknown_and_malformed_tokens_are_refused_alike(store: TokenStore) -> None:
    auth = Authenticator(store)
    token, _ = await auth.issue("ann", "acme", [VIEWER], created_by="root")
    wrong_secret = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    unknown_id = "aob_000000000000_" + token.split("_", 2)[2]
    for credential in (wrong_secret, unknown_id):
        with pytest.raises(Unauthenticated, match=r"^unknown API token$"):
            await auth.authenticate(credential)
    with pytest.raises(Unauthenticated, match="malformed"):
        await auth.authenticate("aob_short")
    with pytest.raises(Unauthenticated, match="unrecognized credential"):
        await auth.authenticate("a.b.c")  # a JWT, but no identity provider is configured


async def test_tokens_expire(store: TokenStore) -> None:
    clock = Clock()
    auth = Authenticator(store, clock_ms=clock)
    token, _ = await auth.issue("bot", "acme", [VIEWER], created_by="root", expires_in_s=60)
    clock.now += 59_999
    assert (await auth.authenticate(token)).name == "bot"
    clock.now += 1
    with pytest.raises(Unauthenticated, match="expired"):
        await auth.authenticate(token)


async def test_listing_and_revoking_stay_within_a_tenant(store: TokenStore) -> None:
    clock = Clock()
    auth = Authenticator(store, clock_ms=clock)
    _, a1 = await auth.issue("a1", "acme", [ADMIN], created_by="root")
    clock.now += 1
    _, b1 = await auth.issue("b1", "beta", [VIEWER], created_by="root")
    clock.now += 1
    _, a2 = await auth.issue("a2", "acme", [VIEWER], created_by="a1")
    assert [r.token_id for r in await auth.listing("acme")] == [a1.token_id, a2.token_id]
    assert [r.token_id for r in await auth.listing()] == [a1.token_id, b1.token_id, a2.token_id]
    assert await auth.revoke(b1.token_id, tenant="acme") is None  # not acme's token
    assert (await store.get(b1.token_id)).revoked_at is None  # type: ignore[union-attr]
    first = await auth.revoke(a2.token_id, tenant="acme")
    assert first is not None
    assert first.revoked_at == clock.now
    clock.now += 5
    again = await auth.revoke(a2.token_id, tenant="acme")
    assert again is not None
    assert again.revoked_at == first.revoked_at  # the first revocation stands
    assert await auth.revoke("nosuchtoken00") is None


@pytest.mark.parametrize(
    ("name", "tenant", "roles", "message"),
    [
        ("ann", "acme", [], "at least one role"),
        ("ann", "acme", ["Admin"], "bad role"),
        ("ann", "ACME", [VIEWER], "bad tenant"),
        ("ann", "a" * 64, [VIEWER], "bad tenant"),
        ("system:x", "acme", [VIEWER], "bad principal name"),
        ("", "acme", [VIEWER], "bad principal name"),
    ],
)
async def test_bad_token_requests_are_refused(
    tmp_path: Path, name: str, tenant: str, roles: list[str], message: str
) -> None:
    store = await SqliteTokenStore.open(tmp_path / "platform.db")
    try:
        with pytest.raises(ValueError, match=message):
            await Authenticator(store).issue(name, tenant, roles, created_by="root")
        assert await store.listing() == []
    finally:
        await store.close()


async def test_the_store_file_holds_no_token(tmp_path: Path) -> None:
    store = await SqliteTokenStore.open(tmp_path / "platform.db")
    try:
        token, _ = await Authenticator(store).issue("ann", "acme", [VIEWER], created_by="r")
    finally:
        await store.close()
    # The secret as the token format splits it: a secret may itself hold "_" (urlsafe
    # base64), so splitting the token at its last "_" left one letter 1 time in ~40.
    parsed = parse_token(token)
    assert parsed is not None
    assert_not_stored(tmp_path, parsed[1].encode())


def assert_not_stored(directory: Path, secret: bytes) -> None:
    stored = b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())
    assert secret[:20] not in stored


ROLE_TABLE = {
    ADMIN: {Permission.READ, Permission.OPERATE, Permission.APPROVE, Permission.ADMIN},
    OPERATOR: {Permission.READ, Permission.OPERATE},
    APPROVER: {Permission.READ, Permission.APPROVE},
    VIEWER: {Permission.READ},
    "finance": set(),
}


@pytest.mark.parametrize("role", sorted(ROLE_TABLE))
def test_each_role_grants_its_permissions(role: str) -> None:
    principal = Principal("p", frozenset({role}), "t")
    assert {p for p in Permission if principal.may(p)} == ROLE_TABLE[role]


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/health", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
        ("OPTIONS", "/api/v1/runs/r1/stream", None),
        ("GET", "/api/v1/runs", Permission.READ),
        ("GET", "/api/v1/runs/r1/stream", Permission.READ),
        ("POST", "/api/v1/workflows/validate", Permission.READ),
        ("POST", "/api/v1/runs", Permission.OPERATE),
        ("POST", "/api/v1/runs/r1/cancel", Permission.OPERATE),
        ("POST", "/api/v1/runs/r1/patch", Permission.OPERATE),
        ("POST", "/api/v1/runs/r1/replay", Permission.OPERATE),
        ("POST", "/api/v1/workflows", Permission.OPERATE),
        ("POST", "/api/v1/tags/t/move", Permission.OPERATE),
        ("POST", "/api/v1/tools", Permission.OPERATE),
        ("DELETE", "/api/v1/anything", Permission.READ),  # no route: a credential, then 404
        ("POST", "/api/v1/approvals/a1/decide", Permission.APPROVE),
        ("POST", "/api/v1/runs/r1/patches/p1/approve", Permission.APPROVE),
        ("POST", "/api/v1/runs/r1/patches/p1/reject", Permission.APPROVE),
        ("GET", "/api/v1/admin/tokens", Permission.ADMIN),
        ("DELETE", "/api/v1/admin/tokens/x", Permission.ADMIN),
        ("GET", "/api/v1/whoami", Permission.READ),
        ("GET", "/health/../api/v1/runs", Permission.READ),
    ],
)
def test_the_policy_table(
    method: str, path: str, needed: Permission | None, tmp_path: Path
) -> None:
    """What each request needs, as the app's routes declare it."""
    routes = create_app(Settings(data_dir=tmp_path)).router.routes
    assert required_permission(method, path, routes) == needed


def test_the_admin_command_creates_lists_and_revokes(tmp_path: Path) -> None:
    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aob.platform.auth", "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    created = command("create", "ci-bot", "--role", "operator", "--tenant", "acme", "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["token"].startswith("aob_")
    assert (token["tenant"], token["roles"]) == ("acme", ["operator"])
    listed = command("list", "--json")
    assert [json.loads(line)["token_id"] for line in listed.stdout.splitlines()] == [
        token["token_id"]
    ]
    assert token["token"] not in listed.stdout
    revoked = command("revoke", token["token_id"])
    assert revoked.returncode == 0
    assert "revoked" in revoked.stdout
    missing = command("revoke", "nosuch")
    assert missing.returncode == 1
    assert "no token" in missing.stderr
    bad = command("create", "x", "--role", "Root")
    assert bad.returncode == 2
    assert bad.stderr.startswith("aob auth: bad role")
