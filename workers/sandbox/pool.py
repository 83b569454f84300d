"""The parent side: a pool of sandbox children that evaluate jq for the event loop.

The parent never runs jq. It serializes the input, hands it to an idle child over a
pipe and awaits the reply, so a runaway program costs the loop nothing; the child's
budgets are enforced by the kernel (see child.py). A child that dies or overstays the
wall guard is killed and replaced at once; requests wait (boundedly) for a free child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import weakref
from collections.abc import Coroutine
from typing import Any, Literal

from aob.events.types import Json
from aob.projections.workflow.expressions import ExpressionError
from aob.projections.workflow.simple_jq import Fallback, compile_simple, evaluate_simple
from aob.workers.sandbox.frames import ALL, FIRST, HEADER, MAX_FRAME, frame
from aob.workers.sandbox.settings import SandboxSettings

Budget = Literal["cpu", "memory", "output"]
_START_TIMEOUT_S = 30.0
# How a child dies when a budget kills it: SIGPROF is the CPU timer; a failed malloc
# in libjq aborts (or faults, or the OOM killer steps in).
_CPU_SIGNALS = {signal.SIGPROF, signal.SIGXCPU}
_MEMORY_SIGNALS = {signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGKILL}


class JqBudgetExceeded(ExpressionError):
    """A jq program ran out of its CPU, memory or output budget."""

    def __init__(self, budget: Budget, message: str) -> None:
        super().__init__(message)
        self.budget: Budget = budget


class JqSandboxBusy(ExpressionError):
    """Too many evaluations are waiting for a child; trying again later can succeed."""


def budget_error(kind: str, settings: SandboxSettings) -> JqBudgetExceeded:
    """The error for budget `kind` (cpu, memory, output, depth), naming its setting."""
    if kind == "cpu":
        message = f"jq CPU budget exceeded ({settings.cpu_ms} ms, AOB_JQ_CPU_MS)"
        return JqBudgetExceeded("cpu", message)
    if kind == "memory":
        message = f"jq memory budget exceeded ({settings.memory_mb} MB, AOB_JQ_MEMORY_MB)"
        return JqBudgetExceeded("memory", message)
    if kind == "depth":
        message = (
            f"jq output budget exceeded (nested deeper than {settings.max_depth} levels,"
            " AOB_JQ_MAX_DEPTH)"
        )
        return JqBudgetExceeded("output", message)
    message = f"jq output budget exceeded ({settings.output_bytes} bytes, AOB_JQ_OUTPUT_BYTES)"
    return JqBudgetExceeded("output", message)


class _ChildDied(Exception):
    pass


class _Child:
    """One child process and its pipes; serves one evaluation at a time.

    The pipes are driven straight from the selector (add_reader/add_writer), with no
    task or transport of their own: nothing is left half-made if the loop shuts down
    while a child starts, and a request costs one write and one read syscall.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.loop = asyncio.get_running_loop()
        self.popen = popen
        assert self.popen.stdin is not None
        assert self.popen.stdout is not None
        self._to, self._from = self.popen.stdin.fileno(), self.popen.stdout.fileno()
        os.set_blocking(self._to, False)
        os.set_blocking(self._from, False)
        self._received = bytearray()
        self._outgoing = memoryview(b"")
        self._reply: asyncio.Future[bytes] | None = None
        self.eof = False
        self.loop.add_reader(self._from, self._on_readable)

    @classmethod
    async def start(cls, settings: SandboxSettings) -> _Child:
        # fork+exec of a big parent takes milliseconds (tens on a busy machine): off the loop.
        spawning = asyncio.get_running_loop().run_in_executor(None, _spawn, settings)
        try:
            child = cls(await asyncio.shield(spawning))
        except asyncio.CancelledError:
            spawning.add_done_callback(_kill_spawned)
            raise
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                await child._next_frame()  # {"ready": true}
        except BaseException:
            child.kill()
            raise
        return child

    @property
    def alive(self) -> bool:
        return not self.eof  # its stdout closes when it dies (no waitpid per request)

    async def call(self, request: bytes) -> bytes:
        """Send one request, return its reply; _ChildDied when the child is gone."""
        self._send(frame(request))
        return await self._next_frame()

    def _next_frame(self) -> asyncio.Future[bytes]:
        self._reply = self.loop.create_future()
        self._deliver()
        return self._reply

    def _send(self, data: bytes) -> None:
        try:
            written = os.write(self._to, data)
        except BlockingIOError:
            written = 0
        except OSError:  # a broken pipe: the child is gone, reading will say so
            return
        if written < len(data):
            self._outgoing = memoryview(data)[written:]
            self.loop.add_writer(self._to, self._on_writable)

    def _on_writable(self) -> None:
        try:
            written = os.write(self._to, self._outgoing)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._outgoing)
        self._outgoing = self._outgoing[written:]
        if not self._outgoing:
            self.loop.remove_writer(self._to)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._from, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self.loop.remove_reader(self._from)
        self._received += data
        self._deliver()

    def _deliver(self) -> None:
        """Resolve the awaited reply once a whole frame (or the end) has arrived."""
        reply = self._reply
        if reply is None or reply.done():
            return
        if len(self._received) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._received)
            if size > MAX_FRAME:
                self.eof = True
                reply.set_exception(_ChildDied())
            elif len(self._received) >= HEADER.size + size:
                reply.set_result(bytes(self._received[HEADER.size : HEADER.size + size]))
                del self._received[: HEADER.size + size]
                return
        if self.eof:
            reply.set_exception(_ChildDied())

    async def exit_signal(self) -> int | None:
        """The signal that killed the child (None if it exited); waits for it to end.

        Its stdout has closed, so it is exiting: poll briefly rather than block."""
        for _ in range(500):
            code = self.popen.poll()
            if code is not None:
                return -code if code < 0 else None
            await asyncio.sleep(0.002)
        self.kill()
        return None

    def kill(self, *, reap: bool = True) -> None:
        """Kill the child and release its pipes, synchronously (safe at loop shutdown).

        `reap=False` leaves the wait for the exit to `reap()`: a child with a large
        heap takes milliseconds to die, which the loop should not sit through."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        if not self.loop.is_closed():
            self.loop.remove_reader(self._from)
            self.loop.remove_writer(self._to)
        self.eof = True
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(_ChildDied())
        if reap:
            self.popen.wait()

    async def reap(self) -> None:
        """Wait (off the loop) for the killed child to exit."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.popen.wait)
        except asyncio.CancelledError:
            self.popen.wait()
            raise


# A lone high surrogate (JSON-escaped, its backslash not itself escaped): jq's parser
# rejects the whole input for one, while it reads a lone low one as U+FFFD.
_LONE_HIGH_SURROGATE = re.compile(
    r"(?<!\\)((?:\\\\)*)\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})"
)


def input_text(value: Json) -> str:
    """`value` as the JSON text jq reads: ASCII, lone surrogates read as U+FFFD."""
    try:
        # ASCII: a lone surrogate in a str is escaped instead of failing to encode.
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ExpressionError(f"input is not JSON: {error}") from None
    except RecursionError:
        raise ExpressionError("input is not JSON: nested too deeply") from None
    if "\\ud" in text:  # rare: skip the pattern's pass over the text otherwise
        text = _LONE_HIGH_SURROGATE.sub(r"\1\\ufffd", text)
    return text


def _spawn(settings: SandboxSettings) -> subprocess.Popen[bytes]:
    config = json.dumps(
        {
            "cpu_ms": settings.cpu_ms,
            "memory_mb": settings.memory_mb,
            "output_bytes": settings.output_bytes,
            "max_depth": settings.max_depth,
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "aob.workers.sandbox.child", config],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )


def _kill_spawned(spawning: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    """A child spawned for a start that was cancelled meanwhile: nobody will use it."""
    if spawning.cancelled() or spawning.exception() is not None:
        return
    popen = spawning.result()
    popen.kill()
    popen.wait()
    for pipe in (popen.stdin, popen.stdout):
        if pipe is not None:
            pipe.close()


class JqSandbox:
    """A pool of `settings.workers` children evaluating jq programs under budgets.

    Bound to the event loop that first uses it; used from another loop (tests run one
    loop per test) it starts afresh there.
    """

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings or SandboxSettings()
        # Weakly: the shared pools are keyed weakly by their loop.
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        self._spares: set[asyncio.Task[None]] = set()
        # Killed children not reaped yet: a reap task cancelled before it ran would
        # leave one unreaped, so closing the pool waits for what is left here.
        self._dying: set[_Child] = set()
        self._slots = asyncio.Semaphore(self.settings.workers)
        self._waiting = 0

    async def first(self, program: str, value: Json) -> Json:
        outputs = await self.evaluate(program, value, every=False, max_outputs=1)
        return outputs[0] if outputs else None

    async def all(self, program: str, value: Json, *, max_outputs: int = 100_000) -> list[Json]:
        return await self.evaluate(program, value, every=True, max_outputs=max_outputs)

    async def truthy(self, program: str, value: Json) -> bool:
        result = await self.first(program, value)
        return result is not None and result is not False

    async def evaluate(
        self, program: str, value: Json, *, every: bool, max_outputs: int
    ) -> list[Json]:
        """The outputs of `program` on `value` (only the first unless `every`).

        A simple program (projections/workflow/simple_jq.py) runs in process, unless
        it meets a case only jq itself can settle."""
        self._check_program(program)
        simple = compile_simple(program) if max_outputs > 0 else None
        if simple is not None:
            settings = self.settings
            with contextlib.suppress(Fallback):
                return [
                    evaluate_simple(
                        simple, value, max_bytes=settings.output_bytes, max_depth=settings.max_depth
                    )
                ]
        request = self._request(program, value, every, max_outputs)
        self._bind()
        child = await self._acquire()
        try:
            async with asyncio.timeout(self.settings.wall_s()):
                reply = await child.call(request)
        except _ChildDied:
            raise await self._died(child) from None
        except TimeoutError:
            self._discard(child)
            raise budget_error("cpu", self.settings) from None
        except BaseException:  # cancelled mid-request: its reply would desync the pipe
            self._discard(child)
            raise
        finally:
            self._release(child)
        return self._outputs(reply)

    def _check_program(self, program: str) -> None:
        limit = self.settings.max_program_bytes
        try:
            size = len(program) if len(program) > limit else len(program.encode())
        except UnicodeEncodeError:
            raise ExpressionError("jq program is not valid Unicode text") from None
        if size > limit:
            raise ExpressionError(
                f"jq program longer than {limit} bytes (AOB_JQ_MAX_PROGRAM_BYTES)"
            )
        if not program.strip():
            raise ExpressionError("empty jq expression")

    @staticmethod
    def _request(program: str, value: Json, every: bool, max_outputs: int) -> bytes:
        head = json.dumps([program, ALL if every else FIRST, max_outputs])
        return head.encode() + b"\n" + input_text(value).encode()

    def _outputs(self, reply: bytes) -> list[Json]:
        try:
            decoded = json.loads(reply)
        except RecursionError:  # the child bounds depth; this is a second line
            raise budget_error("depth", self.settings) from None
        if "ok" in decoded:
            outputs: list[Json] = decoded["ok"]
            return outputs
        if decoded["budget"] is not None:
            raise budget_error(decoded["budget"], self.settings)
        raise ExpressionError(decoded["error"])

    # --- the pool ------------------------------------------------------------------

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop() is not loop:  # earlier loops' children died
            self._loop = weakref.ref(loop)
            self._idle, self._children, self._spares = [], set(), set()
            self._slots = asyncio.Semaphore(self.settings.workers)
            self._waiting = 0
            self._spawn(self._reap_at_shutdown())

    async def _reap_at_shutdown(self) -> None:
        """Kill the children when this loop shuts down (asyncio.run and pytest cancel
        every task then), so none outlives the loop whose selector drives its pipes."""
        try:
            await asyncio.Event().wait()
        finally:
            self._kill_all()

    async def _acquire(self) -> _Child:
        if self._slots.locked() and self._waiting >= self.settings.max_queue:
            raise JqSandboxBusy(
                f"jq sandbox overloaded: {self._waiting} evaluations waiting"
                " (AOB_JQ_MAX_QUEUE, AOB_JQ_WORKERS)"
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            while self._idle:
                child = self._idle.pop()
                if child.alive:
                    return child
                self._discard(child, replace=False)
            return await self._start()
        except BaseException:
            self._slots.release()
            raise

    async def _start(self) -> _Child:
        try:
            child = await _Child.start(self.settings)
        except (OSError, _ChildDied, TimeoutError) as error:
            raise JqSandboxBusy(f"jq sandbox: cannot start a child ({error!r})") from None
        self._children.add(child)
        return child

    def _release(self, child: _Child) -> None:
        if child.alive:
            self._keep_idle(child)
        self._slots.release()

    def _keep_idle(self, child: _Child) -> None:
        if len(self._idle) < self.settings.workers:
            self._idle.append(child)
        else:  # a replacement raced a fresh start: one too many
            self._discard(child, replace=False)

    async def _died(self, child: _Child) -> ExpressionError:
        """The error for a child that died mid-request; starts its replacement."""
        died_of = await child.exit_signal()
        code = child.popen.returncode
        self._discard(child)
        if died_of in _CPU_SIGNALS:
            return budget_error("cpu", self.settings)
        if died_of in _MEMORY_SIGNALS:
            return budget_error("memory", self.settings)
        return ExpressionError(f"jq sandbox child exited unexpectedly ({code})")

    def _discard(self, child: _Child, *, replace: bool = True) -> None:
        """Kill `child`; start its replacement at once (in the background)."""
        self._children.discard(child)
        child.kill(reap=False)
        self._dying.add(child)
        self._spawn(self._reap(child))
        if replace:
            self._spawn(self._replace())

    async def _reap(self, child: _Child) -> None:
        await child.reap()
        self._dying.discard(child)

    async def _replace(self) -> None:
        with contextlib.suppress(JqSandboxBusy):
            self._keep_idle(await self._start())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._spares.add(task)
        task.add_done_callback(self._spares.discard)

    def pids(self) -> list[int]:
        """Process ids of the live children (for operators and tests)."""
        return [child.popen.pid for child in self._children if child.alive]

    async def start(self) -> None:
        """Start every child now (optional: they otherwise start on first use)."""
        self._bind()
        children = [await self._acquire() for _ in range(self.settings.workers)]
        for child in children:
            self._release(child)

    async def close(self) -> None:
        """Kill every child; the sandbox starts new ones if it is used again."""
        if self._loop is None or self._loop() is not asyncio.get_running_loop():
            return
        self._loop = None  # the next use binds afresh
        for task in list(self._spares):
            task.cancel()
        await asyncio.gather(*self._spares, return_exceptions=True)
        self._kill_all()

    def _kill_all(self) -> None:
        for dying in list(self._dying):
            dying.popen.wait()  # killed already: its exit is at most milliseconds away
        self._dying.clear()
        children = list(self._children)
        self._idle, self._children = [], set()
        self._slots = asyncio.Semaphore(self.settings.workers)  # unbound: holds no loop
        for child in children:
            child.kill()


# One pool per event loop: a process serves on one loop, but tests and tools may run
# several loops (in turn, or in threads), and a child's pipes belong to one selector.
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JqSandbox] = (
    weakref.WeakKeyDictionary()
)
_outside_loops: JqSandbox | None = None


def shared_sandbox() -> JqSandbox:
    """The process-wide pool (of the running loop), created on first use from
    SandboxSettings()."""
    global _outside_loops
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if _outside_loops is None:
            _outside_loops = JqSandbox()
        return _outside_loops
    sandbox = _shared.get(loop)
    if sandbox is None:
        sandbox = _shared[loop] = JqSandbox()
    return sandbox


async def close_shared_sandbox() -> None:
    """Kill the shared pool's children (engine stop calls this)."""
    sandbox = _shared.get(asyncio.get_running_loop())
    if sandbox is not None:
        await sandbox.close()


async def jq_first(program: str, value: Json) -> Json:
    """The first output of `program` on `value` (None when it has none), sandboxed."""
    return await shared_sandbox().first(program, value)


async def jq_all(program: str, value: Json, *, max_outputs: int = 100_000) -> list[Json]:
    """Every output of `program` on `value`, sandboxed; more than `max_outputs` is an error."""
    return await shared_sandbox().all(program, value, max_outputs=max_outputs)


async def jq_truthy(program: str, value: Json) -> bool:
    """jq truthiness of the first output (false, null and no output are false)."""
    return await shared_sandbox().truthy(program, value)
