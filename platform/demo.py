"""`aob server dev --run FILE`: submit one workflow through the real API and show its progress.

It talks to the server over HTTP exactly as a user's client would, so the first
command a newcomer types exercises the whole path: API, log, coordinator, workers,
read models.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aob.projections.workflow.definition import DefinitionError, load_definition

TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class DemoRun:
    path: Path
    definition: dict[str, Any]
    inputs: Any

    @classmethod
    def from_files(cls, path: Path, inputs_path: Path | None) -> DemoRun | str:
        """The run to start, or a one-line reason why the files can't be used."""
        try:
            definition = load_definition(path.read_text(encoding="utf-8"))
        except OSError as error:
            return f"cannot read {path}: {error.strerror}"
        except DefinitionError as error:
            return f"{path}: {error}"
        default_inputs = path.with_name(path.name.split(".")[0] + ".inputs.json")
        inputs_path = inputs_path or (default_inputs if default_inputs.exists() else None)
        if inputs_path is None:
            return cls(path, definition, {})
        try:
            return cls(path, definition, json.loads(inputs_path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            return f"cannot use inputs {inputs_path}: {error}"

    async def run(self, base_url: str, token: str | None = None) -> str:
        """Submit, print each event as it happens; returns the run's final status."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(
            base_url=base_url, timeout=30.0, trust_env=False, headers=headers
        ) as client:
            response = await client.post(
                "/api/v1/runs", json={"definition": self.definition, "inputs": self.inputs}
            )
            if response.status_code != 202:
                print(f"aob server: {self.path}: {_refusal(response)}", file=sys.stderr, flush=True)
                return "refused"
            run_id = response.json()["run_id"]
            print(f"\nrun {run_id} of {self.path} submitted", flush=True)
            return await _follow(client, run_id)


def _refusal(response: httpx.Response) -> str:
    """One line for a refused submission: the problem's detail and its first errors."""
    try:
        problem = response.json()
        detail = str(problem.get("detail") or problem.get("title"))
        errors = [f"{e.get('path') or '/'}: {e.get('message')}" for e in problem.get("errors", [])]
    except (ValueError, AttributeError):
        return f"refused with HTTP {response.status_code}"
    shown = "; ".join(errors[:3]) + ("; ..." if len(errors) > 3 else "")
    text = f"refused ({response.status_code}): {detail}" + (f": {shown}" if shown else "")
    return " ".join(line.strip() for line in text.splitlines())  # one line


async def _follow(client: httpx.AsyncClient, run_id: str) -> str:
    """Print events as they land; times are when each happened, from the submission."""
    after: int | None = None
    submitted_at: int | None = None
    while True:
        params = {"after": after} if after is not None else {}
        events = (await client.get(f"/api/v1/runs/{run_id}/events", params=params)).json()["items"]
        for event in events:
            after = event["offset"]
            submitted_at = submitted_at or event["occurred_at"]
            line = describe(event)
            if line:
                print(f"  +{event['occurred_at'] - submitted_at:5d} ms  {line}", flush=True)
        run = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] in TERMINAL and not events:
            _print_result(run)
            return str(run["status"])
        await asyncio.sleep(0.05)


def describe(event: dict[str, Any]) -> str | None:
    """One line for the events a watcher cares about."""
    data = event.get("data", {})
    node = data.get("node_id")
    return {
        "NodeScheduled": f"{node}: scheduled (iteration {data.get('iteration')}, "
        f"attempt {data.get('attempt')})",
        "NodeCompleted": f"{node}: completed -> {_short(data.get('output'))}",
        "NodeFailed": f"{node}: failed: {data.get('error')}",
        "NodeSkipped": f"{node}: skipped ({data.get('reason')})",
        "ApprovalRequested": f"{node}: waiting for approval {data.get('approval_id')}",
        "PatchApplied": f"patch {data.get('patch_id')} applied",
        "RunCompleted": "run completed",
        "RunFailed": f"run failed: {data.get('error')}",
        "RunCancelled": "run cancelled",
    }.get(event["type"])


def _print_result(run: dict[str, Any]) -> None:
    print(f"\nrun {run['run_id']}: {run['status']}", flush=True)
    if run["status"] == "completed":
        print("output: " + json.dumps(run.get("output"), indent=2), flush=True)
    elif run.get("error"):
        print(f"error: {run['error']}", flush=True)


def _short(value: Any, limit: int = 70) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
