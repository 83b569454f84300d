"""TLS while connecting to a checked address: the host name stays the SNI, the Host
header and the name the certificate is verified against."""

from __future__ import annotations

import ssl

import pytest
import trustme

from aob.workers.host import NodeError
from tests.workers.http.conftest import ScriptedResolver, task
from tests.workers.http.servers import Request, Response, Server

NAME = "api.example.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def tls_server(ca: trustme.CA, *names: str) -> Server:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    server = await Server().start("127.0.0.1", tls=context)
    server.route("/hello", lambda r: Response(200, {"host": r.headers["host"]}))
    return server


@pytest.fixture
def resolver() -> ScriptedResolver:
    return ScriptedResolver({NAME: [["127.0.0.1"]]})


async def test_sni_host_and_verification_use_the_name_while_connecting_by_address(
    make_worker, ca, resolver
):
    server = await tls_server(ca, NAME)  # no IP address in the certificate
    try:
        worker = make_worker(resolver=resolver, allow=["127.0.0.1"], ssl_context=client_context(ca))
        output = await worker.handle(task({"url": f"https://{NAME}:{server.port}/hello"}))
        assert output["status"] == 200
        (request,) = server.requests
        assert request.sni == NAME
        assert request.headers["host"] == f"{NAME}:{server.port}"
        assert request.local == "127.0.0.1"
        assert resolver.lookups == [NAME]
    finally:
        await server.stop()


async def test_a_certificate_for_another_name_is_refused(make_worker, ca, resolver):
    server = await tls_server(ca, "other.example.test")
    try:
        worker = make_worker(resolver=resolver, allow=["127.0.0.1"], ssl_context=client_context(ca))
        with pytest.raises(NodeError, match="cannot connect") as caught:
            await worker.handle(task({"url": f"https://{NAME}:{server.port}/hello"}))
        assert "certificate" in str(caught.value).lower()
        assert server.requests == []
    finally:
        await server.stop()


async def test_an_untrusted_certificate_is_refused(make_worker, ca, resolver):
    server = await tls_server(ca, NAME)
    try:
        worker = make_worker(resolver=resolver, allow=["127.0.0.1"])  # system CAs only
        with pytest.raises(NodeError, match="cannot connect"):
            await worker.handle(task({"url": f"https://{NAME}:{server.port}/hello"}))
        assert server.requests == []
    finally:
        await server.stop()


async def test_the_ca_bundle_setting_is_trusted(make_worker, ca, resolver, tmp_path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    server = await tls_server(ca, NAME)
    try:
        worker = make_worker(resolver=resolver, allow=["127.0.0.1"], ca_bundle=bundle)
        output = await worker.handle(task({"url": f"https://{NAME}:{server.port}/hello"}))
        assert output["body"] == {"host": f"{NAME}:{server.port}"}
    finally:
        await server.stop()


async def test_a_downgrade_to_http_drops_secret_headers(make_worker, ca, resolver, server):
    secure = await tls_server(ca, NAME)
    try:
        secure.route(
            "/go", Response(302, headers={"Location": f"http://{NAME}:{server.port}/landing"})
        )

        def landing(request: Request) -> Response:
            return Response(200, {"auth": request.headers.get("authorization")})

        server.route("/landing", landing)
        worker = make_worker(resolver=resolver, allow=["127.0.0.1"], ssl_context=client_context(ca))
        output = await worker.handle(
            task(
                {
                    "url": f"https://{NAME}:{secure.port}/go",
                    "headers": {"Authorization": "Bearer long-lived-token"},
                }
            )
        )
        assert secure.requests[0].headers["authorization"] == "Bearer long-lived-token"
        assert output["body"] == {"auth": None}
        assert resolver.lookups == [NAME, NAME]  # the hop was resolved and judged again
    finally:
        await secure.stop()
