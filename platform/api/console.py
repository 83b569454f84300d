"""The web console and the interactive API docs, served from the package's own assets.

`GET /` answers the console's single page (aob.platform.console/static/index.html); its
scripts, styles and the vendored libraries are under `/console/`. Swagger UI (`/docs`)
and ReDoc (`/redoc`) load from there too, so nothing is fetched from a CDN and the
pages work offline. These paths are public (`aob.platform.auth.http.PUBLIC_PATHS`):
they carry no data; everything the console shows comes from the API with the token the
user logs in with. `GET /api/v1/me` tells the console who that token is and what it may
do, so that it offers only the actions the API would accept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from aob.platform.api.deps import PrincipalDep
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission

CONSOLE_PREFIX = "/console"
VENDOR = f"{CONSOLE_PREFIX}/vendor"
# The console's page runs only its own scripts: user data rendered by mistake as HTML
# could not run anything. Inline styles are allowed for the SVG graph's positions.
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)

me_router = APIRouter(prefix="/api/v1", tags=["system"])


def static_dir() -> Path:
    """Where the console's assets are installed (package data beside this package)."""
    return Path(__file__).resolve().parent.parent / "console" / "static"


@me_router.get(
    "/me",
    summary="Who the credential is, and what it may do",
    dependencies=[require(Permission.READ)],
)
async def me(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "name": principal.name,
        "tenant": principal.tenant,
        "roles": sorted(principal.roles),
        "permissions": [p.value for p in Permission if principal.may(p)],
        "via": principal.via,
    }


def install_console(app: FastAPI) -> None:
    """The console at `/`, its assets under `/console/`, and the docs from local assets.
    The app must be created with `docs_url=None, redoc_url=None`."""
    root = static_dir()
    index = root / "index.html"
    app.include_router(me_router)

    async def console_page() -> FileResponse:
        return FileResponse(
            index,
            media_type="text/html",
            headers={
                "Content-Security-Policy": CONSOLE_CSP,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",  # the dev login URL carries a token
            },
        )

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )

    app.add_api_route("/", console_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        "/docs/oauth2-redirect", oauth2_redirect, methods=["GET"], include_in_schema=False
    )
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
    app.mount(CONSOLE_PREFIX, StaticFiles(directory=root), name="console")
