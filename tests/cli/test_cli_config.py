"""Server address and credentials from flags, environment or the config file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.fanout.live import QUICK, LiveServer


class Recorder(BaseHTTPRequestHandler):
    """A real HTTP server that answers every GET with a run and remembers the headers."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        Recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps({"run_id": "run_x", "status": "running", "nodes": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Recorder.seen.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def write_config(home: Path, text: str) -> None:
    folder = home / ".config" / "aob"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(text, encoding="utf-8")


def test_token_and_actor_go_out_as_headers_flags_over_env_over_file(
    aob: Cli, recorder: str
) -> None:
    write_config(aob.home, f'server = "{recorder}"\ntoken = "from-file"\nactor = "file-actor"\n')
    env_less = {"AOB_SERVER": ""}
    assert aob("run", "status", "run_x", env=env_less).code == 0
    assert (
        aob(
            "run",
            "status",
            "run_x",
            env={**env_less, "AOB_TOKEN": "from-env", "AOB_ACTOR": "env-actor"},
        ).code
        == 0
    )
    assert (
        aob(
            "run",
            "status",
            "run_x",
            "--token",
            "from-flag",
            "--actor",
            "flag-actor",
            env={**env_less, "AOB_TOKEN": "from-env"},
        ).code
        == 0
    )
    # Each command may send several requests (a run, then its approvals or usage): the
    # headers of each command, in order.
    sent = list(dict.fromkeys((h["authorization"], h["x-aob-actor"]) for h in Recorder.seen))
    assert sent == [
        ("Bearer from-file", "file-actor"),
        ("Bearer from-env", "env-actor"),
        ("Bearer from-flag", "flag-actor"),
    ]
    assert all(h["user-agent"].startswith("aob-cli/") for h in Recorder.seen)


def test_the_server_from_the_config_file_and_the_actor_it_records(
    aob: Cli, server: LiveServer, tmp_path: Path
) -> None:
    write_config(aob.home, f'server = "{server.url}"\nactor = "alice"\n')
    (tmp_path / "wf.json").write_text(json.dumps(QUICK), encoding="utf-8")
    started = aob("run", "start", str(tmp_path / "wf.json"), "-f", env={"AOB_SERVER": ""})
    assert started.code == 0
    run_id = started.out.split()[1]
    assert server.run(run_id)["submitted_by"] == "alice"
    shown = aob("run", "status", run_id, "--actor", "bob", env={"AOB_SERVER": ""})
    assert "by alice" in shown.out

    custom = tmp_path / "other.toml"
    custom.write_text('server = "http://127.0.0.1:9"\n', encoding="utf-8")
    elsewhere = aob("run", "list", "--config", str(custom), env={"AOB_SERVER": ""})
    assert elsewhere.code == 4


def test_config_file_mistakes_are_one_line(aob: Cli) -> None:
    write_config(aob.home, "server = \n")
    broken = aob("run", "list", env={"AOB_SERVER": ""})
    assert broken.code == 2
    assert broken.err.startswith("aob: config file ")
    assert len(broken.err.splitlines()) == 1

    write_config(aob.home, 'sever = "http://x"\n')
    typo = aob("run", "list", env={"AOB_SERVER": ""})
    assert typo.code == 2
    assert "unknown key(s) sever" in typo.err

    missing = aob("run", "list", "--config", "/nonexistent/aob.toml")
    assert (missing.code, missing.err) == (
        2,
        "aob: config file /nonexistent/aob.toml does not exist\n",
    )
    # Named by AOB_CONFIG, as by --config: a missing file is a mistake, not "no file".
    named = aob("run", "list", env={"AOB_CONFIG": "/nonexistent/env.toml", "AOB_SERVER": ""})
    assert (named.code, named.err) == (2, "aob: config file /nonexistent/env.toml does not exist\n")

    (aob.home / ".config" / "aob" / "config.toml").unlink()
    bad_url = aob("run", "list", "--server", "localhost:8080")
    assert bad_url.code == 2
    assert "must look like http://host:port" in bad_url.err


def test_an_unexpected_answer_is_one_line_not_a_traceback(aob: Cli, recorder: str) -> None:
    odd = aob("run", "list", "--server", recorder)  # a run where a page of runs belongs
    assert odd.code == 4
    assert odd.err == (
        f"aob: {recorder} is not an aob server (HTTP 200, application/json); "
        "check --server or AOB_SERVER\n"
    )


def test_with_authentication_on_the_token_is_the_way_in(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "aob.platform.auth",
            "--data-dir",
            str(data),
            "create",
            "alice",
            "--role",
            "operator",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(created.stdout)["token"]
    live = LiveServer(data, env={"AOB_AUTH": "tokens"}).start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        aob = Cli(home, live.url)
        refused = aob("run", "list")
        assert refused.code == 3
        assert refused.err.startswith("aob: this endpoint needs a credential")
        assert len(refused.err.splitlines()) == 1

        (tmp_path / "wf.json").write_text(json.dumps(QUICK), encoding="utf-8")
        started = aob(
            "run", "start", str(tmp_path / "wf.json"), "--input", "x=1", "-f", "--token", token
        )
        assert started.code == 0, started.err
        run_id = started.out.split()[1]
        shown = aob("run", "status", run_id, "-o", "json", env={"AOB_TOKEN": token})
        assert shown.json()["submitted_by"] == "alice"
        logs = aob("logs", "stream", run_id, "-o", "json", env={"AOB_TOKEN": token})
        assert logs.lines()[-1]["status"] == "completed"
        bad = aob("run", "list", "--token", "aob_nope_nope")
        assert bad.code == 3
    finally:
        live.stop()


def test_the_actor_help_says_the_token_decides_under_the_default_auth(aob: Cli) -> None:
    """Under AOB_AUTH=tokens the server ignores X-Aob-Actor: the help must not promise
    that --actor is recorded."""
    for args in (["--help"], ["run", "list", "--help"]):
        text = " ".join(aob(*args).out.split())
        said = text[text.index("--actor ACTOR who") :]
        assert said.startswith(
            "--actor ACTOR who is acting, recorded on events (AOB_ACTOR); only a server with "
            "AOB_AUTH=off reads it: under AOB_AUTH=tokens (the default) the token decides"
        ), said[:200]
