"""Authentication and roles: API tokens (hashed at rest), optional JWTs from an
identity provider, four roles, a tenant per principal.

`install(app, settings)` (in `security`) protects an API app; `python -m
aob.platform.auth` manages tokens from the command line.
"""

from aob.platform.auth.authenticator import Authenticator
from aob.platform.auth.http import (
    AuthMiddleware,
    declared_permission,
    principal_of,
    require,
    required_permission,
)
from aob.platform.auth.jwt import JwtConfig, JwtVerifier, Unauthenticated
from aob.platform.auth.principal import (
    ADMIN,
    APPROVER,
    DEFAULT_TENANT,
    OPERATOR,
    ROLES,
    VIEWER,
    Permission,
    Principal,
)
from aob.platform.auth.store import PostgresTokenStore, SqliteTokenStore, TokenStore
from aob.platform.auth.tokens import TokenRecord

__all__ = [
    "ADMIN",
    "APPROVER",
    "DEFAULT_TENANT",
    "OPERATOR",
    "ROLES",
    "VIEWER",
    "AuthMiddleware",
    "Authenticator",
    "JwtConfig",
    "JwtVerifier",
    "Permission",
    "PostgresTokenStore",
    "Principal",
    "SqliteTokenStore",
    "TokenRecord",
    "TokenStore",
    "Unauthenticated",
    "declared_permission",
    "principal_of",
    "require",
    "required_permission",
]
