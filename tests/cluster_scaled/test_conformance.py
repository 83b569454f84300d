"""The end-to-end conformance suite (tests/e2e) against a scaled cluster: 2 APIs, 2
coordinators, 2 projectors and 2 worker processes, started once for the module.

Each request of the suite's client goes to the next API instance in turn, so a run is
often submitted through one and read through the other. The suite's own node types
(`flaky`, `sleep`, `gate`) run in this process, as on the other backends.

The tests run here are those that need no store of their own: the ones that list every
run or workflow of the store (`test_workflows_are_versioned...`, `test_run_by_workflow_id
...`, `test_invalid_definition...`, `test_list_runs...`, `test_submit_is_durable...`)
stay with the `embedded` and `cluster` backends, which start fresh per test; starting
8 processes per test would cost minutes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from aob.platform.engine import open_log
from aob.platform.settings import Settings
from tests.cluster_scaled.conftest import Broker, ScaledCluster, scaled_env
from tests.e2e.conftest import Backend, suite_workers
from tests.e2e.nodes import TEST_NODE_TYPES, ExecutionSink
from tests.e2e.test_api import (
    test_bad_requests_get_problem_details,
    test_health_schema_and_openapi,
    test_validate_accepts_a_good_definition,
)
from tests.e2e.test_run_traces import test_retry_timers_keep_the_runs_trace
from tests.e2e.test_runs import (
    test_a_branch_with_no_taken_edge_skips_its_whole_subtree,
    test_and_join_waits_for_every_input,
    test_any_join_runs_once_on_the_first_input,
    test_attempt_timeout_fails_the_node,
    test_bounded_loop_repeats_until_its_condition_is_false,
    test_cancel_stops_a_running_run_and_is_refused_after,
    test_conditional_branches_and_dead_path_elimination,
    test_each_node_executes_exactly_once,
    test_failed_attempts_are_retried_with_backoff,
    test_large_outputs_are_stored_once_and_referenced_so_events_stay_small,
    test_loop_stops_at_its_bound,
    test_patch_adds_a_node_that_then_runs,
    test_patch_rewriting_a_started_node_is_refused,
    test_retries_exhausted_fail_the_run_naming_the_node,
    test_submit_runs_to_completion_with_outputs,
    test_timeline_holds_the_whole_history_in_order,
    test_unknown_node_type_is_skipped_with_a_warning_and_dependents_run,
)
from tests.fixtures.postgres import PostgresSchemas

pytestmark = pytest.mark.slow

INSTANCES = (
    "api-1",
    "api-2",
    "coordinator-1",
    "coordinator-2",
    "projector-1",
    "projector-2",
    "workers-1",
    "workers-2",
)

__all__ = [  # collected here, against the scaled cluster
    "test_a_branch_with_no_taken_edge_skips_its_whole_subtree",
    "test_and_join_waits_for_every_input",
    "test_any_join_runs_once_on_the_first_input",
    "test_attempt_timeout_fails_the_node",
    "test_bad_requests_get_problem_details",
    "test_bounded_loop_repeats_until_its_condition_is_false",
    "test_cancel_stops_a_running_run_and_is_refused_after",
    "test_conditional_branches_and_dead_path_elimination",
    "test_each_node_executes_exactly_once",
    "test_failed_attempts_are_retried_with_backoff",
    "test_health_schema_and_openapi",
    "test_large_outputs_are_stored_once_and_referenced_so_events_stay_small",
    "test_loop_stops_at_its_bound",
    "test_patch_adds_a_node_that_then_runs",
    "test_patch_rewriting_a_started_node_is_refused",
    "test_retries_exhausted_fail_the_run_naming_the_node",
    "test_retry_timers_keep_the_runs_trace",
    "test_submit_runs_to_completion_with_outputs",
    "test_timeline_holds_the_whole_history_in_order",
    "test_unknown_node_type_is_skipped_with_a_warning_and_dependents_run",
    "test_validate_accepts_a_good_definition",
]


@pytest.fixture(scope="module")
def scaled_services(
    scaled_broker: Broker, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScaledCluster]:
    schemas = PostgresSchemas(postgres_dsn)
    directory = tmp_path_factory.mktemp("scaled-e2e")
    env = scaled_env(
        scaled_broker.bootstrap,
        schemas.create(),
        directory,
        AOB_NODE_TYPES=json.dumps(TEST_NODE_TYPES),
    )
    cluster = ScaledCluster(directory, env)
    try:
        cluster.start(*INSTANCES)
        yield cluster
    finally:
        cluster.stop()
        schemas.drop_all()


class RoundRobin(httpx.AsyncBaseTransport):
    """Sends each request to the next of `urls` (the API instances) in turn."""

    def __init__(self, urls: list[str]) -> None:
        self.targets = itertools.cycle([httpx.URL(url) for url in urls])
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = next(self.targets)
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def backend(scaled_services: ScaledCluster, tmp_path: Path) -> AsyncIterator[Backend]:
    env = scaled_services.env
    settings = Settings(
        data_dir=tmp_path / "data",
        kafka_bootstrap=env["AOB_KAFKA_BOOTSTRAP"],
        database_url=SecretStr(env["AOB_DATABASE_URL"]),
        topic_prefix=env["AOB_TOPIC_PREFIX"],
        kafka_poll_interval=0.02,
    )
    sink = ExecutionSink()
    suite_log = await open_log(settings, "suite")
    urls = [scaled_services.url(name) for name in ("api-1", "api-2")]
    try:
        async with (
            suite_workers(suite_log, sink),
            httpx.AsyncClient(transport=RoundRobin(urls), base_url="http://aob") as client,
        ):
            yield Backend("scaled", client, sink)
    finally:
        await suite_log.close()
