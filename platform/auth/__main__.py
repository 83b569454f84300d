"""`python -m aob.platform.auth`: manage API tokens on the server's own store.

For whoever runs the server (it reads AOB_DATA_DIR / AOB_DATABASE_URL like the
server): create tokens of any tenant, list them, revoke them. Admins without access
to the server use the API instead (/api/v1/admin/tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from aob.platform.auth.authenticator import Authenticator
from aob.platform.auth.principal import DEFAULT_TENANT, ROLES
from aob.platform.auth.security import open_token_store
from aob.platform.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aob.platform.auth", description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="the server's data dir (AOB_DATA_DIR)")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("name", help="who the token speaks for (recorded as the actor)")
    create.add_argument(
        "--role",
        action="append",
        required=True,
        dest="roles",
        help=f"repeatable: {', '.join(ROLES)}, or a custom role approvals may name",
    )
    create.add_argument("--tenant", default=DEFAULT_TENANT)
    create.add_argument("--expires-in", type=int, metavar="SECONDS")
    create.add_argument("--description", default="")
    listing = sub.add_parser("list", help="tokens (never their secrets)")
    listing.add_argument("--tenant")
    revoke = sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    for command in (create, listing, revoke):
        command.add_argument("--json", action="store_true", help="print JSON")
    return parser


async def run(args: argparse.Namespace) -> int:
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    store = await open_token_store(settings)
    authenticator = Authenticator(store)
    try:
        if args.action == "create":
            try:
                token, record = await authenticator.issue(
                    args.name,
                    args.tenant,
                    args.roles,
                    created_by="admin command",
                    expires_in_s=args.expires_in,
                    description=args.description,
                )
            except ValueError as error:
                print(f"aob auth: {error}", file=sys.stderr)
                return 2
            if args.json:
                print(json.dumps({"token": token, **record.public()}))
            else:
                print(token)
                print(f"(id {record.token_id}; shown once: store it now)", file=sys.stderr)
            return 0
        if args.action == "list":
            records = await authenticator.listing(args.tenant)
            for record in records:
                public = record.public()
                if args.json:
                    print(json.dumps(public))
                else:
                    state = "revoked" if record.revoked_at else "active"
                    print(
                        f"{record.token_id}  {record.tenant}/{record.name}  "
                        f"{','.join(sorted(record.roles))}  {state}"
                    )
            return 0
        revoked = await authenticator.revoke(args.token_id)
        if revoked is None:
            print(f"aob auth: no token {args.token_id!r}", file=sys.stderr)
            return 1
        print(json.dumps(revoked.public()) if args.json else f"revoked {revoked.token_id}")
        return 0
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
