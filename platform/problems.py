"""RFC 9457 problem details: every error the API returns has this shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Problem(Exception):
    """An error meant for the API's caller: status, a stable type slug, a clear detail;
    `headers` go on the response (e.g. Retry-After)."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://aob.dev/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


def not_found(what: str, ident: str) -> Problem:
    return Problem(404, "not-found", f"{what.capitalize()} not found", f"no {what} {ident!r}")


def invalid_workflow(problems: list[dict[str, str]]) -> Problem:
    count = len(problems)
    return Problem(
        422,
        "invalid-workflow",
        "Invalid workflow definition",
        f"the workflow definition has {count} problem{'s' if count != 1 else ''}",
        errors=problems,
    )
