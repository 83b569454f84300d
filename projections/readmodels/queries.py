"""The read side, engine-neutral: portable SELECTs, row decoding and list cursors.

Shared by every read-model store so SQLite and Postgres answer queries alike.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aob.projections.readmodels.views import loads

JSON_COLUMNS = frozenset(
    {
        "inputs",
        "output",
        "definition",
        "operations",
        "reasons",
        "added_nodes",
        "payload",
        "approvers",
        "data",
        "budget",
        "policy",
        "votes",
    }
)
BOOL_COLUMNS = frozenset({"warning", "fired"})

# Every table in primary-key order, for dump(): the rebuild check compares these.
TABLE_KEYS: dict[str, str] = {
    "runs": "run_id",
    "node_runs": "run_id, node_id, iteration",
    "workflows": "workflow_id, version",
    "tags": "tag",
    "timeline": 'topic, "partition", "offset"',
    "patches": "run_id, patch_id",
    "approvals": "approval_id",
    "timers": "timer_id",
    "projector_offsets": 'topic, "partition"',
    "llm_usage": "event_id",
    "run_budgets": "run_id",
}

# Lists leave out `definition`: it can be large, and get_* has it.
RUN_SUMMARY = (
    "run_id, workflow_id, version, tag, status, inputs, output, error, error_node_id, "
    "revision, submitted_at, submitted_by, updated_at, finished_at, trace_id, tenant"
)
GET_RUN = f"SELECT {RUN_SUMMARY}, definition FROM runs WHERE run_id = :run_id"
# A run's row as lists show it: no definition, no node runs.
GET_RUN_SUMMARY = f"SELECT {RUN_SUMMARY} FROM runs WHERE run_id = :run_id"

# Skipped nodes that never ran have no scheduled_at; they sort by when they were skipped.
RUN_NODES = """
SELECT node_id, iteration, type, status, attempt, worker, output, error, skip_reason,
       warning, scheduled_at, started_at, finished_at, carried_from
FROM node_runs WHERE run_id = :run_id
ORDER BY COALESCE(scheduled_at, finished_at), node_id, iteration
"""

TIMELINE = """
SELECT topic, "partition", "offset", event_id, key, type, occurred_at, actor, trace_id,
       causation_id, data
FROM timeline WHERE key = :key AND "offset" > :after
ORDER BY "offset", topic, "partition" LIMIT :limit
"""

WORKFLOW_COLUMNS = "workflow_id, version, name, created_at, created_by, tenant"
GET_WORKFLOW = f"""
SELECT {WORKFLOW_COLUMNS}, definition FROM workflows
WHERE workflow_id = :workflow_id AND version = :version
"""
GET_LATEST_WORKFLOW = f"""
SELECT {WORKFLOW_COLUMNS}, definition FROM workflows WHERE workflow_id = :workflow_id
ORDER BY version DESC LIMIT 1
"""
LIST_WORKFLOWS = """
SELECT w.workflow_id, w.version, w.name, w.created_at, w.created_by, w.tenant, v.versions
FROM workflows w JOIN (
    SELECT workflow_id, MAX(version) AS latest, COUNT(*) AS versions
    FROM workflows GROUP BY workflow_id
) v ON v.workflow_id = w.workflow_id AND v.latest = w.version
{where}ORDER BY w.workflow_id
"""

TAG_COLUMNS = "tag, workflow_id, version, moved_at, moved_by, tenant"
GET_TAG = f"SELECT {TAG_COLUMNS} FROM tags WHERE tag = :tag"
LIST_TAGS = f"SELECT {TAG_COLUMNS} FROM tags ORDER BY tag"


def list_workflows(tenant: str | None = None) -> tuple[str, dict[str, Any]]:
    """The latest version of each workflow (of `tenant`; None: every tenant's)."""
    if tenant is None:
        return LIST_WORKFLOWS.format(where=""), {}
    return LIST_WORKFLOWS.format(where="WHERE w.tenant = :tenant\n"), {"tenant": tenant}


def list_tags(tenant: str | None = None) -> tuple[str, dict[str, Any]]:
    if tenant is None:
        return LIST_TAGS, {}
    return f"SELECT {TAG_COLUMNS} FROM tags WHERE tenant = :tenant ORDER BY tag", {"tenant": tenant}


PATCH_COLUMNS = (
    "run_id, patch_id, status, operations, reason, reasons, revision, added_nodes, "
    "proposed_at, decided_at, node_id, review, reviewed_by, review_reason, reviewed_at"
)
LIST_PATCHES = f"""
SELECT {PATCH_COLUMNS} FROM patches WHERE run_id = :run_id
ORDER BY COALESCE(proposed_at, decided_at), patch_id
"""
GET_PATCH = f"SELECT {PATCH_COLUMNS} FROM patches WHERE run_id = :run_id AND patch_id = :patch_id"

APPROVAL_COLUMNS = (
    "approval_id, run_id, node_id, iteration, attempt, status, message, payload, approvers, "
    "deadline, on_timeout, decision, decided_by, comments, requested_at, decided_at, "
    "decision_event_id, policy, votes, level"
)
GET_APPROVAL = f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE approval_id = :approval_id"

DUE_TIMERS = """
SELECT timer_id, run_id, fire_at, purpose, node_id, iteration, attempt, fired
FROM timers WHERE NOT fired AND fire_at <= :now
ORDER BY fire_at, timer_id LIMIT :limit
"""


def dump_row(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A row as `dump` gives it: its values in column order, JSON text parsed, so that
    two stores compare by what their JSON says, not by how it was written (a float's
    text differs between JSON libraries and versions: 1e-05 or 0.00001)."""
    return tuple(
        loads(value) if column in JSON_COLUMNS and isinstance(value, str) else value
        for column, value in row.items()
    )


def decode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready dict: JSON text parsed, 0/1 flags as booleans."""
    out: dict[str, Any] = {}
    for column, value in row.items():
        if column in JSON_COLUMNS:
            value = loads(value)
        elif column in BOOL_COLUMNS and value is not None:
            value = bool(value)
        out[column] = value
    return out


def where(filters: Mapping[str, object | None]) -> tuple[list[str], dict[str, Any]]:
    """Equality conditions for the filters that are set (None means "any").

    Built per call rather than `(:x IS NULL OR x = :x)`: Postgres cannot type an
    untyped NULL parameter, and a fixed condition would defeat the indexes.
    """
    conditions = [f"{column} = :{column}" for column, value in filters.items() if value is not None]
    params = {column: value for column, value in filters.items() if value is not None}
    return conditions, params


def list_approvals(
    run_id: str | None, status: str | None, tenant: str | None = None
) -> tuple[str, dict[str, Any]]:
    conditions, params = where({"run_id": run_id, "status": status})
    if tenant is not None:
        conditions.append("run_id IN (SELECT run_id FROM runs WHERE tenant = :tenant)")
        params["tenant"] = tenant
    sql = f"SELECT {APPROVAL_COLUMNS} FROM approvals {_where_clause(conditions)}"
    return sql + " ORDER BY requested_at, approval_id", params


def list_runs(
    status: str | None,
    workflow_id: str | None,
    limit: int,
    before: str | None,
    tenant: str | None = None,
    since: int | None = None,
    until: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Newest first, keyset-paginated on (submitted_at, run_id); one extra row
    tells whether another page follows. `tenant` None: every tenant's.

    `since`/`until` (epoch ms) keep runs submitted in [since, until): half-open, so
    consecutive windows never count a run twice. The range rides the same
    (..., submitted_at, run_id) indexes as the paging.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    conditions, params = where({"tenant": tenant, "status": status, "workflow_id": workflow_id})
    if since is not None:
        conditions.append("submitted_at >= :since")
        params["since"] = since
    if until is not None:
        conditions.append("submitted_at < :until")
        params["until"] = until
    if before is not None:
        params["before_at"], params["before_id"] = decode_cursor(before)
        conditions.append(
            "(submitted_at < :before_at OR (submitted_at = :before_at AND run_id < :before_id))"
        )
    params["limit"] = limit + 1
    sql = f"SELECT {RUN_SUMMARY} FROM runs {_where_clause(conditions)}"
    return sql + " ORDER BY submitted_at DESC, run_id DESC LIMIT :limit", params


def runs_page(
    rows: Sequence[Mapping[str, Any]], limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Items of one page and the cursor of the next (None on the last page)."""
    items = [decode_row(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return items, None
    last = items[-1]
    return items, encode_cursor(last["submitted_at"], last["run_id"])


def encode_cursor(submitted_at: int, run_id: str) -> str:
    """Opaque to clients, so the paging key can change without breaking them."""
    raw = json.dumps([submitted_at, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of `encode_cursor`; ValueError for anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        submitted_at, run_id = json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as e:
        raise ValueError(f"invalid cursor {cursor!r}") from e
    if not isinstance(submitted_at, int) or not isinstance(run_id, str):
        raise ValueError(f"invalid cursor {cursor!r}")
    return submitted_at, run_id


def _where_clause(conditions: Sequence[str]) -> str:
    return "WHERE " + " AND ".join(conditions) if conditions else ""


# --- LLM usage and budgets -------------------------------------------------------------

USAGE_OF_RUN = """
SELECT event_id, node_id, iteration, attempt, tenant, model, llm_calls, prompt_tokens,
       completion_tokens, total_tokens, cached_tokens, cost_nano_usd, recorded_at
FROM llm_usage WHERE run_id = :run_id ORDER BY recorded_at, event_id
"""

# A run that exists, with the budget it was submitted with (NULL: none).
RUN_BUDGET = """
SELECT r.run_id, r.tenant, b.budget FROM runs r
LEFT JOIN run_budgets b ON b.run_id = r.run_id WHERE r.run_id = :run_id
"""

# Sums as BIGINT: Postgres would hand SUM(bigint) back as numeric.
_SPEND = """
SELECT CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT) AS tokens,
       CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) AS cost_nano,
       CAST(COALESCE(SUM(CASE WHEN cost_nano_usd IS NULL THEN total_tokens ELSE 0 END), 0)
            AS BIGINT) AS unpriced_tokens
FROM llm_usage
"""


def spend(
    run_id: str | None = None,
    tenant: str | None = None,
    since: int | None = None,
    excluding: Sequence[str] = (),
) -> tuple[str, dict[str, Any]]:
    """Tokens and cost recorded for a run and/or a tenant (since `since`, epoch ms),
    leaving out the usage events `excluding` names (a worker counts those itself)."""
    conditions, params = where({"run_id": run_id, "tenant": tenant})
    if since is not None:
        conditions.append("recorded_at >= :since")
        params["since"] = since
    if excluding:
        names = [f"x{n}" for n in range(len(excluding))]
        conditions.append(f"event_id NOT IN ({', '.join(':' + n for n in names)})")
        params.update(zip(names, excluding, strict=True))
    return _SPEND + _where_clause(conditions), params


def usage_recorded(event_ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Which of these usage events the read model has."""
    names = [f"x{n}" for n in range(len(event_ids))]
    sql = f"SELECT event_id FROM llm_usage WHERE event_id IN ({', '.join(':' + n for n in names)})"
    return sql, dict(zip(names, event_ids, strict=True))
