"""Errors for scripts and people: every exit code `aob --help` documents, provoked for
real; errors as JSON on stdout with `--output json`; a server that is not aob named in
one line; an HTML error page summarised, never pasted into the live view."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import AOB, REPO, Cli
from tests.fanout.live import FAILING, HELD, QUICK, LiveServer

HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><h1>Bad Gateway</h1><p>nginx/1.25</p>\n</body></html>\n"
)


class Impostor(BaseHTTPRequestHandler):
    """Answers every request with `reply` (status, content type, body)."""

    reply: tuple[int, str, str] = (200, "text/html", HTML_PAGE)

    def _answer(self) -> None:
        status, content_type, body = self.reply
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def serve(reply: tuple[int, str, str]) -> Iterator[str]:
    handler = type("Handler", (Impostor,), {"reply": reply})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def html_site() -> Iterator[str]:
    yield from serve((200, "text/html; charset=utf-8", HTML_PAGE))


@pytest.fixture
def json_api() -> Iterator[str]:
    yield from serve((200, "application/json", '{"ok": true, "items": "none"}'))


class AobLookalike(Impostor):
    """Says it is aob (its OpenAPI title), then answers what no aob server would."""

    def _answer(self) -> None:
        if self.path == "/openapi.json":
            self.reply = (200, "application/json", '{"info": {"title": "aob"}}')
        else:
            self.reply = (200, "application/json", '{"items": [{"no_run_id": 1}]}')
        super()._answer()

    do_GET = do_POST = _answer


@pytest.fixture
def lookalike() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), AobLookalike)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def documented_codes(aob: Cli) -> dict[int, str]:
    """The exit codes `aob --help` lists, with what it says of each."""
    text = aob("--help").out
    section = text[text.index("exit codes:") :]
    return {int(code): what for code, what in re.findall(r"^\s+(\d+)\s+(.+)$", section, re.M)}


def test_every_documented_exit_code_is_what_happens(
    aob: Cli, server: LiveServer, write_json: Any, lookalike: str, json_api: str
) -> None:
    provoked: dict[int, list[str]] = {}

    def expect(code: int, *args: str, env: dict[str, str] | None = None) -> None:
        result = aob(*args, env=env)
        assert result.code == code, (args, result.out, result.err)
        provoked.setdefault(code, []).append(" ".join(args))

    quick, failing = write_json("quick.json", QUICK), write_json("failing.json", FAILING)
    invalid = write_json("invalid.json", {"name": "x", "nodes": []})
    expect(0, "run", "start", str(quick), "--input", "x=1", "-f")
    expect(1, "run", "start", str(failing), "-f")
    expect(2, "run", "frobnicate")
    expect(2, "run", "start", "no-such-file.yaml")
    expect(2, "workflow", "validate", str(invalid))  # the server answers 422
    expect(2, "run", "start", str(invalid))
    expect(3, "run", "status", "run_nope")  # 404
    finished = server.submit(QUICK, {"x": 1})
    server.wait_finished(finished)
    expect(3, "run", "cancel", finished)  # 409
    expect(4, "run", "list", env={"AOB_SERVER": "http://127.0.0.1:9"})
    expect(4, "run", "list", env={"AOB_SERVER": json_api})
    expect(70, "run", "list", env={"AOB_SERVER": lookalike})  # aob's, unreadable: a bug

    held = json.loads(aob("run", "start", str(write_json("held.json", HELD)), "-o", "json").out)
    following = aob.popen("logs", "stream", held["run_id"])
    assert following.stdout is not None
    assert "run submitted" in following.stdout.readline()  # it follows the run now
    following.send_signal(signal.SIGINT)
    # communicate drains both pipes while it waits: a child blocked writing to a full
    # pipe that nobody reads could not exit. A deadline for a loaded machine.
    _, errors = following.communicate(timeout=120)
    assert following.returncode == 130
    provoked[130] = ["logs stream (Ctrl-C)"]
    assert "Traceback" not in errors
    server.cancel(held["run_id"])

    assert set(documented_codes(aob)) == set(provoked)


def test_aob_debug_shows_the_traceback_of_a_bug_and_0_or_false_does_not(
    aob: Cli, lookalike: str
) -> None:
    for off in ("", "0", "false"):
        quiet = aob("run", "list", env={"AOB_SERVER": lookalike, "AOB_DEBUG": off})
        assert quiet.code == 70
        assert quiet.err.startswith("aob: internal error: ")  # the helper checks: no traceback
    loud = subprocess.run(  # `aob` itself refuses a traceback: asked for, here it is
        [*AOB, "run", "list"],
        env={**aob.env, "AOB_SERVER": lookalike, "AOB_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback (most recent call last)" in loud.stderr


def test_json_errors_go_to_stdout_with_the_same_exit_code(
    aob: Cli, write_json: Any, html_site: str
) -> None:
    cases: list[tuple[list[str], dict[str, str] | None, int, str]] = [
        (["run", "status", "run_nope"], None, 3, "not-found"),
        (["workflow", "validate", str(write_json("bad.json", {"nodes": []}))], None, 2, ""),
        (["run", "start", "missing.yaml"], None, 2, "invalid-input"),
        (["run", "list", "--limit", "many"], None, 2, "invalid-input"),
        (["run", "list"], {"AOB_SERVER": "http://127.0.0.1:9"}, 4, "unreachable"),
        (["run", "list"], {"AOB_SERVER": html_site}, 4, "not-aob-server"),
    ]
    for args, env, code, error_type in cases:
        text = aob(*args, env=env)
        as_json = aob(*args, "-o", "json", env=env)
        assert (text.code, as_json.code) == (code, code), (args, as_json.err)
        error = as_json.json()["error"]  # stdout is one JSON document
        assert error["exit_code"] == code
        assert error["detail"], error
        assert error["title"], error
        said = next(line for line in text.err.splitlines() if line.startswith("aob: "))
        assert error["detail"].splitlines()[0] == said.removeprefix("aob: ")
        if error_type:
            assert error["type"].endswith(error_type), error
    refused = aob("run", "status", "run_nope", "-o", "json").json()["error"]
    assert refused["status"] == 404
    invalid = aob("workflow", "validate", str(write_json("bad.json", {"nodes": []})), "-o", "json")
    assert invalid.json()["error"]["status"] == 422
    assert invalid.json()["error"]["errors"]  # the problem's field errors come along


def test_a_server_that_is_not_aob_is_named_in_one_line(
    aob: Cli, html_site: str, json_api: str
) -> None:
    for site, content_type in [(html_site, "text/html"), (json_api, "application/json")]:
        for args in (["run", "list"], ["run", "status", "r1"], ["approvals", "list"]):
            result = aob(*args, env={"AOB_SERVER": site})
            assert result.code == 4, result.err
            assert result.err.startswith(f"aob: {site} is not an aob server (HTTP ")
            assert f", {content_type}); check --server or AOB_SERVER" in result.err
            assert len(result.err.splitlines()) == 1
            assert "<" not in result.err
            assert "KeyError" not in result.err


def test_an_html_error_page_is_summarised_in_the_live_view(tmp_path: Path) -> None:
    for site in serve((500, "text/html", HTML_PAGE)):
        port = site.rsplit(":", 1)[1]
        live = LiveServer(tmp_path / "data", env={"AOB_HTTP_ALLOW": f"127.0.0.1:{port}"})
        live.start()
        try:
            home = tmp_path / "home"
            home.mkdir()
            aob = Cli(home, live.url)
            workflow = {
                "name": "call",
                "nodes": [{"id": "call", "type": "http", "config": {"url": f"{site}/x"}}],
            }
            (tmp_path / "call.json").write_text(json.dumps(workflow), encoding="utf-8")
            result = aob("run", "start", str(tmp_path / "call.json"), "-f")
            assert result.code == 1, result.err
            failed = [line for line in result.out.splitlines() if "failed" in line]
            assert failed, result.out
            assert "an HTML page: 502 Bad Gateway" in result.out
            assert "<" not in result.out
            assert "nginx/1.25" not in result.out
        finally:
            live.stop()


def readme_commands() -> list[list[str]]:
    """Every `aob ...` command in the README's shell blocks, as argument lists."""
    import shlex

    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part.replace("&", " ").strip())
                if words and words[0] in ("aob", ".venv/bin/aob"):
                    commands.append(words[1:])
    return commands


def test_every_aob_command_in_the_readme_parses_and_aob_is_where_it_says() -> None:
    from aob.cli.main import build_parser
    from aob.platform.__main__ import build_parser as server_parser

    commands = readme_commands()
    assert len(commands) > 10
    for words in commands:
        if words[0] == "server":
            server_parser().parse_args(words[1:])  # a usage error would exit 2
        else:
            build_parser().parse_args(words)
    # The first command installs the package into .venv: its `aob` lands beside python.
    assert (Path(sys.executable).parent / "aob").exists()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/aob server dev" in readme.split("\n\n", 3)[2]
    assert "`. .venv/bin/activate`" in readme


@pytest.mark.parametrize(
    "reply",
    [(200, "application/json", "[]"), (200, "application/json", "{}"), (204, "text/plain", "")],
)
def test_validate_against_a_server_that_is_not_aob_is_never_valid(
    aob: Cli, write_json: Any, reply: tuple[int, str, str]
) -> None:
    path = str(write_json("quick.json", QUICK))
    for site in serve(reply):
        result = aob("workflow", "validate", path, env={"AOB_SERVER": site})
        assert result.code == 4, (result.out, result.err)
        assert result.err.startswith(f"aob: {site} is not an aob server (HTTP {reply[0]}")
        assert len(result.err.splitlines()) == 1
        assert "valid" not in result.out
        as_json = aob("workflow", "validate", path, "-o", "json", env={"AOB_SERVER": site})
        assert as_json.code == 4
        assert as_json.json()["error"]["type"].endswith("not-aob-server")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--server", "http://[::1", "run", "list"], "is not a URL"),
        (["--server", "http://127.0.0.1:99999", "run", "list"], "is not a URL"),
        (["--server", "http://127.0.0.1:0", "run", "list"], "port must be from 1 to 65535"),
        (["--server", "ftp://127.0.0.1:21", "run", "list"], "must look like http://host:port"),
        (["--timeout", "-1", "run", "list"], "timeout must be a number above 0"),
        (["--timeout", "0", "run", "list"], "timeout must be a number above 0"),
        (["run", "list", "--timeout", "nan"], "timeout must be a number above 0"),
        (["run", "list", "--timeout", "inf"], "timeout must be a number above 0"),
        (["run", "list", "--timeout", "soon"], "is not a number of seconds"),
        (["run", "status", ""], "RUN: must not be empty"),
        (["workflow", "show", ""], "TAG_OR_ID: must not be empty"),
        (["approve", " ", "approve"], "ID: must not be empty"),
    ],
)
def test_a_bad_address_timeout_or_empty_id_is_invalid_input_not_a_bug(
    aob: Cli, args: list[str], said: str
) -> None:
    for output in ("text", "json"):
        result = aob(*args, "-o", output)
        assert result.code == 2, (args, result.err)
        errors = [line for line in result.err.splitlines() if line.startswith("aob: ")]
        assert len(errors) == 1, result.err
        assert said in errors[0], result.err
        assert "internal error" not in result.err
        if output == "json":
            assert result.json()["error"]["type"].endswith("invalid-input")


def test_a_bad_address_from_the_environment_is_invalid_input(aob: Cli) -> None:
    for address in ("http://[::1", "http://127.0.0.1:99999", "127.0.0.1:8080"):
        result = aob("run", "list", env={"AOB_SERVER": address})
        assert result.code == 2, result.err
        assert result.err.startswith(f"aob: server address {address!r}"), result.err
        assert len(result.err.splitlines()) == 1


def test_a_file_over_the_servers_request_limit_is_named_as_invalid_input(
    aob: Cli, write_json: Any
) -> None:
    """The CLI reads files up to 16 MiB; the API takes 2 MiB by default: its 413 names
    the file, exit 2."""
    big = {**QUICK, "description": "x" * (3 * 1024 * 1024)}
    path = write_json("big.json", big)
    for args in (["workflow", "validate", str(path)], ["run", "start", str(path)]):
        result = aob(*args)
        assert result.code == 2, (args, result.err)
        assert result.err == (
            f"aob: {path}: too large for the server: the request body exceeds 2097152 bytes "
            "(its limit, AOB_MAX_REQUEST_BYTES; 2 MiB unless its operator changed it)\n"
        )
        error = aob(*args, "-o", "json").json()["error"]
        assert (error["exit_code"], error["status"]) == (2, 413)
        assert error["detail"] == result.err.removeprefix("aob: ").rstrip("\n")


def test_logs_stream_from_a_server_that_is_not_aob_sending_events(aob: Cli) -> None:
    """Server-Sent Events, but not aob's: the address is named, exit 4, not a bug."""
    for body in ("id: 1\ndata: not json\n\n", "id: 1\ndata: [1]\n\n", "event: end\ndata: {\n\n"):
        for site in serve((200, "text/event-stream", body)):
            result = aob("logs", "stream", "run_x", env={"AOB_SERVER": site})
            assert result.code == 4, (body, result.err)
            assert result.err.startswith(f"aob: {site} is not an aob server (HTTP 200, "), (
                result.err
            )
            assert len(result.err.splitlines()) == 1
