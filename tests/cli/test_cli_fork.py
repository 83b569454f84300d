"""`aob run fork` with edits and `aob run diff A B`, as a user runs them against a live
dev server."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Cli
from tests.fanout.live import LiveServer
from tests.fork.workflows import BEFORE_JOIN, FORKABLE, last_completion, scheduled


def test_fork_with_a_changed_input_then_diff(aob: Cli, server: LiveServer) -> None:
    parent = server.submit(FORKABLE, {"x": 1})
    server.wait_finished(parent)
    middle = last_completion(server.events(parent), BEFORE_JOIN)

    forked = aob("run", "fork", parent, "--from-event", str(middle), "--input", "x=5")
    assert forked.code == 0, forked.err
    line = forked.out.strip()
    assert line.endswith(
        f"forks {parent} after event {middle}; carried over: b, c; "
        "run again (affected by the edits): a, d"
    )
    fork_id = line.split()[1]
    assert server.wait_finished(fork_id)["output"] == [2, 10]
    assert scheduled(server.events(fork_id)) == ["a", "d", "j"]

    text = aob("run", "diff", parent, fork_id, "--color", "never")
    assert text.code == 0, text.err
    assert f"B  {fork_id}  completed  forked from {parent} after event {middle}" in text.out
    assert "(edits: inputs_patch)" in text.out
    assert "definition: same" in text.out
    assert "inputs: differs\n--- a/inputs\n+++ b/inputs\n" in text.out
    rows = {
        line.split()[0]: line.split()[1:]
        for line in text.out.splitlines()
        if line[:2] in {"a ", "b ", "j "}
    }
    assert rows["b"] == ["completed", "completed", "(carried", "over)", "same"]
    assert rows["a"] == ["completed", "completed", "differs"]
    d_diff = "output of node d\n--- a/nodes/d/output\n+++ b/nodes/d/output\n@@ -1 +1 @@\n-2\n+10\n"
    assert d_diff in text.out

    data = aob("run", "diff", parent, fork_id, "-o", "json").json()
    assert data["identical"] is False
    assert data["b"]["fork"]["edits"]["inputs_patch"] == {"x": 5}
    assert [n["node_id"] for n in data["nodes"] if not n["output_equal"]] == ["a", "d", "j"]
    same = aob("run", "diff", parent, parent, "-o", "json")
    assert (same.code, same.json()["identical"]) == (0, True)


def test_fork_with_a_definition_patch_file(aob: Cli, server: LiveServer, tmp_path: Path) -> None:
    parent = server.submit(FORKABLE, {"x": 1})
    server.wait_finished(parent)
    patch = tmp_path / "patch.yaml"
    patch.write_text("- {op: replace, path: /nodes/3/config/expr, value: .nodes.a.x * 3}\n")
    forked = aob("run", "fork", parent, "--definition-patch", str(patch), "-o", "json", "-f")
    assert forked.code == 0, forked.err
    accepted = forked.lines()[0]
    assert server.run(accepted["run_id"])["output"] == [2, 3]  # from the start, patched

    broken = tmp_path / "broken.json"
    broken.write_text('[{"op": "remove", "path": "/nodes/0/type"}]')
    refused = aob("run", "fork", parent, "--definition-patch", str(broken))
    assert refused.code == 2  # 422: invalid input, as `aob --help` documents
    assert refused.err.startswith("aob: ")
    assert "/nodes/0" in refused.err

    not_a_patch = tmp_path / "object.json"
    not_a_patch.write_text("{}")
    usage = aob("run", "fork", parent, "--definition-patch", str(not_a_patch))
    assert (usage.code, usage.err) == (
        2,
        f"aob: {not_a_patch}: a JSON Patch is an array of operations\n",
    )


def test_diff_of_an_unknown_run(aob: Cli, server: LiveServer) -> None:
    parent = server.submit(FORKABLE, {"x": 1})
    unknown = aob("run", "diff", parent, "run_nope")
    assert (unknown.code, unknown.err) == (3, "aob: no run 'run_nope'\n")
    as_json = aob("run", "diff", "run_nope", parent, "-o", "json")
    assert as_json.code == 3
    assert as_json.json()["error"]["exit_code"] == 3


def test_fork_refuses_an_inputs_patch_that_is_not_an_object_or_array(
    aob: Cli, server: LiveServer, tmp_path: Path
) -> None:
    parent = server.submit(FORKABLE, {"x": 1})
    server.wait_finished(parent)
    for content in ("hello\n", "42\n", "null\n"):
        patch = tmp_path / "scalar.yaml"
        patch.write_text(content, encoding="utf-8")
        forked = aob("run", "fork", parent, "--inputs-patch", str(patch), "-o", "json")
        assert forked.code == 2, (content, forked.out, forked.err)
        assert forked.err == f"aob: {patch}: inputs must be an object: " + (
            "an inputs patch is a JSON merge patch (an object) or a JSON Patch (an array)\n"
        )
        assert "run_id" not in forked.out  # no run was started
        assert forked.json()["error"]["exit_code"] == 2
