"""Who is calling, and what each role may do."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final


class Permission(enum.Enum):
    READ = "read"  # see and stream runs, workflows, approvals, patches, tools
    OPERATE = "operate"  # submit, cancel, patch runs; create workflows, move tags, tools
    APPROVE = "approve"  # decide approvals, approve or reject patches
    ADMIN = "admin"  # manage the tenant's tokens


ADMIN: Final = "admin"
OPERATOR: Final = "operator"
APPROVER: Final = "approver"
VIEWER: Final = "viewer"
ROLES: Final = (ADMIN, OPERATOR, APPROVER, VIEWER)

ROLE_PERMISSIONS: Final[dict[str, frozenset[Permission]]] = {
    ADMIN: frozenset(Permission),
    OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    APPROVER: frozenset({Permission.READ, Permission.APPROVE}),
    VIEWER: frozenset({Permission.READ}),
}

# Roles other than the four grant nothing by themselves; approvals may name them
# ("role:finance" in a node's approvers). `\Z`, not `$`: `$` also matches before a
# final newline, so "admin\n" would pass.
ROLE_NAME: Final = re.compile(r"^[a-z][a-z0-9_.-]{0,63}\Z")
TENANT_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
PRINCIPAL_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}\Z")
DEFAULT_TENANT: Final = "default"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its name (recorded as the actor of what it does), its
    roles and its tenant; `via` says which credential proved it."""

    name: str
    roles: frozenset[str]
    tenant: str
    via: str = "token"

    def may(self, permission: Permission) -> bool:
        return any(permission in ROLE_PERMISSIONS.get(role, ()) for role in self.roles)


def check_roles(roles: Iterable[str]) -> frozenset[str]:
    """`roles` as a set, or ValueError naming the first bad one."""
    found = frozenset(roles)
    for role in sorted(found):
        if not ROLE_NAME.match(role):
            raise ValueError(f"bad role name {role!r}: lower-case letters, digits, _ . -")
    if not found:
        raise ValueError(f"a credential needs at least one role, among {list(ROLES)}")
    return found


def check_tenant(tenant: str) -> str:
    if not TENANT_NAME.match(tenant):
        raise ValueError(
            f"bad tenant name {tenant!r}: up to 63 lower-case letters, digits, _ and -"
        )
    return tenant


def check_name(name: str) -> str:
    if not PRINCIPAL_NAME.match(name):
        raise ValueError(f"bad principal name {name!r}: up to 128 letters, digits, _ . @ + -")
    return name
