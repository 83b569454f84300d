"""A sandbox child: evaluates jq requests from stdin, one at a time, under budgets.

Run by the pool as `python -m aob.workers.sandbox.child '<config json>'`. Budgets are
enforced by the kernel, not by Python, because libjq holds the GIL and never yields:
- CPU: ITIMER_PROF is armed around each evaluation with SIGPROF left at its default
  action, so the kernel kills this process when the budget is spent;
- memory: RLIMIT_AS caps the address space at the baseline plus the budget; a failed
  malloc inside libjq aborts the process, one in Python raises MemoryError.
The parent tells the budgets apart by how this process died.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from collections import OrderedDict
from typing import Any

from aob.projections.workflow.expressions import CompiledJq, ExpressionError, compile_jq
from aob.workers.sandbox.frames import ALL, HEADER, deeper_than, frame


class _Budget(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Evaluator:
    def __init__(self, cpu_ms: int, output_bytes: int, max_depth: int) -> None:
        self.cpu_s = cpu_ms / 1000
        self.output_bytes = output_bytes
        self.max_depth = max_depth
        self.programs = Programs()

    def handle(self, request: bytes) -> bytes:
        """One request -> one reply (see frames.py)."""
        head, _, text = request.partition(b"\n")
        program, mode, max_outputs = json.loads(head)
        signal.setitimer(signal.ITIMER_PROF, self.cpu_s)
        try:
            return self._run(program, mode == ALL, max_outputs, text.decode())
        except ExpressionError as error:
            return _error(error.message, None)
        except _Budget as budget:
            return _error(budget.kind, budget.kind)
        except MemoryError:
            return _error("memory", "memory")
        except Exception as error:  # whatever the binding raises, this process serves on
            return _error(f"jq: {error}", None)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)

    def _run(self, program: str, every: bool, max_outputs: int, text: str) -> bytes:
        outputs = self._outputs(self.programs.get(program), text, every, max_outputs)
        reply = ('{"ok":[' + ",".join(outputs) + "]}").encode()
        if len(reply) > self.output_bytes + 9:  # the envelope is not the program's output
            raise _Budget("output")
        return reply

    def _outputs(self, compiled: CompiledJq, text: str, every: bool, limit: int) -> list[str]:
        outputs: list[str] = []
        size = 0
        try:
            for output in compiled.input_text(text):  # type: ignore[attr-defined]
                if len(outputs) == limit:
                    raise ExpressionError(f"more than {limit} outputs")
                size += len(output) + 1
                if size > self.output_bytes + 1:
                    raise _Budget("output")
                if deeper_than(output, self.max_depth):
                    raise _Budget("depth")
                outputs.append(output)
                if not every:
                    break
        except ValueError as error:
            raise ExpressionError(str(error)) from None
        return outputs


class Programs:
    """Compiled programs, least recently used dropped first.

    Bounded in count and in source size: the cache lives inside the memory budget, so
    it must never crowd out an evaluation (a compiled program takes ~14 KB and more
    for long sources)."""

    def __init__(self, max_entries: int = 1024, max_chars: int = 2_000_000) -> None:
        self._compiled: OrderedDict[str, CompiledJq] = OrderedDict()
        self._chars = 0
        self._max_entries, self._max_chars = max_entries, max_chars

    def get(self, program: str) -> CompiledJq:
        """`program` with each output turned into JSON text by jq itself.

        The child never builds Python objects from the data: jq parses the input text
        and dumps each output, the reply splices those texts together. `program` alone
        compiles first, uncached: exactly the in-process compile errors, and nothing
        the wrapping parentheses would make valid."""
        compiled = self._compiled.get(program)
        if compiled is not None:
            self._compiled.move_to_end(program)
            return compiled
        _compile(program)
        compiled = _compile("(" + program + "\n) | tojson")
        self._compiled[program] = compiled
        self._chars += len(program)
        while len(self._compiled) > self._max_entries or self._chars > self._max_chars:
            dropped, _ = self._compiled.popitem(last=False)
            self._chars -= len(dropped)
        return compiled


# Not compile_jq's own cache: this process keeps its cache bounded (see Programs).
_compile = compile_jq.__wrapped__


def _error(message: str, budget: str | None) -> bytes:
    return json.dumps({"error": message, "budget": budget}).encode()


def _vm_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _read(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str]) -> None:
    config: dict[str, Any] = json.loads(argv[1])
    # The protocol owns the real stdout; anything else printing goes to stderr.
    out = os.dup(1)
    os.dup2(2, 1)
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    # Tenant code yields the CPU to the service's own event loop when both want it; its
    # budget is CPU time, so running at a lower priority costs it none.
    os.nice(10)
    evaluator = Evaluator(config["cpu_ms"], config["output_bytes"], config["max_depth"])
    evaluator.handle(b'[".", 0, 1]\n[{"warm": "up"}]')  # fault pages in before the baseline
    limit = _vm_bytes() + config["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _write(out, frame(b'{"ready":true}'))
    while (header := _read(0, HEADER.size)) is not None:
        request = _read(0, HEADER.unpack(header)[0])
        if request is None:
            return
        _write(out, frame(evaluator.handle(request)))


if __name__ == "__main__":
    main(sys.argv)
