"""The controller: owns the output, the signals and the API; runs one module at a time.

Reload as a loop (the opposite of eCapture's `goto reload` with one shared,
already-cancelled context): each request waits in a queue; the loop stops,
drains and closes the running module, builds a new module from the new
configuration alone, initialises and starts it, and only then answers. When
the new one cannot start, it is closed and the previous configuration is
built again (fresh too) and started, and the answer says why. A module owns
only what it opened (its BPF objects, readers, processor); the sink and the
writers are the controller's (api/output.py), so across a reload the event
stream and the HAR document go on as one file, and the counters go on.

The module's blocking `run()` runs in a worker thread; the event loop (the
main thread) handles SIGINT/SIGTERM, the API and the reloads. Without the
API (no --listen) there is nothing to reload and no loop is needed:
`run_alone()` takes the same steps on threads, and asyncio (with the ssl
module it imports: ~15 ms and ~6 MB of a capture's start-up) is never
imported (run() and its helpers import it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import msgspec

from ecapture.config import GlobalConfig
from ecapture.errors import ConfigError, EcaptureError
from ecapture.modules.base import Module
from ecapture.pipeline import PipelineCounters

from .output import Output

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

# Fields of a configuration that belong to the whole capture (the output, the
# logs, the process): a reload keeps them; a request that changes one is refused.
CAPTURE_FIELDS = ("eventaddr", "output_format", "har_file", "tsize", "hex", "color",
                  "logaddr", "debug", "nice")

ModuleClass = type[Module]


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class ReloadError(EcaptureError):
    """A reload did not happen; `restored` says whether the previous
    configuration runs again, `status` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int, restored: bool) -> None:
        super().__init__(message)
        self.status = status
        self.restored = restored


@dataclass(slots=True)
class _Reload:
    cls: ModuleClass
    config: GlobalConfig
    answer: asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class ReloadRecord:
    """What the last reload did, for /status."""

    module: str
    succeeded: bool
    error: str | None
    gap_s: float  # from the old module's stop to the new one's start (nothing captured)
    finished: float = field(default_factory=time.time)


def add_counters(total: PipelineCounters, part: PipelineCounters) -> None:
    """Add one module's counts to the capture's."""
    total.records += part.records
    total.data_bytes += part.data_bytes
    total.connections_closed += part.connections_closed
    total.http_exchanges += part.http_exchanges
    total.parser_errors += part.parser_errors
    for reason, loss in dict(part.lost).items():
        total.add_loss(reason, loss.records, loss.bytes)
    for name, count in dict(part.items).items():
        total.items[name] = total.items.get(name, 0) + count


def config_json(config: GlobalConfig) -> dict[str, Any]:
    built: dict[str, Any] = msgspec.to_builtins(config)
    return built


def keep_capture_fields(
    running: GlobalConfig, new: GlobalConfig, given: Sequence[str],
) -> GlobalConfig:
    """`new` with the running capture's output/process fields; `given` names the
    fields the request set: one that differs from the running value is refused."""
    for name in CAPTURE_FIELDS:
        if name in given and getattr(new, name) != getattr(running, name):
            raise ConfigError(
                f"{name} is {getattr(running, name)!r} for the whole capture and cannot change "
                f"by a reload (got {getattr(new, name)!r})"
            )
    return dataclasses.replace(new, **{name: getattr(running, name) for name in CAPTURE_FIELDS})


class Controller:
    """One capture: its output, its signals, its API, and its module of the moment."""

    def __init__(self, cls: ModuleClass, config: GlobalConfig, *, signals: bool = True) -> None:
        """`signals`: handle SIGINT/SIGTERM (only the main thread can; tests run
        a controller in another thread and stop it with `signal_stop`)."""
        self._first = (cls, config)
        self._signals = signals
        self.module: Module | None = None
        self.module_name = cls.name
        self.config = config
        self.state = State.STARTING
        self.output: Output | None = None
        self.started = time.monotonic()
        self.reloads = 0
        self.last_reload: ReloadRecord | None = None
        self.probes: list[str] = []
        self._past = PipelineCounters()  # of the modules already closed
        self._run_task: asyncio.Future[None] | None = None
        self._requests: asyncio.Queue[_Reload] | None = None
        self._stop: asyncio.Event | threading.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.api: Any = None  # the ApiServer, when --listen

    # ----- the loop ---------------------------------------------------------------------

    async def run(self, serve: Callable[[Controller], Any] | None = None) -> int:
        """Start the first module, serve, reload on request, stop on a signal.

        `serve(controller)` is awaited once the first module runs and returns
        an object with an async `close()` (the API server)."""
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._requests = asyncio.Queue()
        self._stop = asyncio.Event()
        cls, config = self._first
        self.output = Output(config, cls.name)
        try:
            self._install_signals()
            try:
                await self._launch(cls, config)
                if serve is not None:
                    self.api = await serve(self)
                try:
                    await self._serve_requests()
                finally:
                    self.state = State.STOPPING
                    if self.api is not None:
                        await self.api.close()
                    await self._retire()
            finally:
                self._remove_signals()
                self._answer_pending("the capture is stopping")
        finally:
            if self.state is not State.FAILED:
                self.state = State.STOPPED
            self.output.close()
        if self.reloads:
            self._log_summary()
        return 0

    async def _serve_requests(self) -> None:
        import asyncio

        assert self._requests is not None and isinstance(self._stop, asyncio.Event)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                get: asyncio.Future[Any] = asyncio.ensure_future(self._requests.get())
                run: asyncio.Future[Any] | None = self._run_task
                assert run is not None
                await asyncio.wait({stop, get, run}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                elif stop.done() or run.done():
                    get.result().answer.set_exception(
                        ReloadError("the capture is stopping", status=503, restored=False))
                if stop.done():
                    return
                if run.done():
                    run.result()  # a failed run (the sink died) ends the capture with its error
                    return
                await self._reload(get.result())
        finally:
            stop.cancel()

    async def _reload(self, request: _Reload) -> None:
        """Stop, drain and close the running module; start the new one, or the old again."""
        old = self.module
        assert old is not None
        old_cls, old_config = type(old), self.config
        self.state = State.RELOADING
        began = time.monotonic()
        log.info("reload: stopping %s for a new %s configuration", old.name, request.cls.name)
        await self._retire()  # a sink failure raises: the capture ends
        assert self._stop is not None
        if self._stop.is_set():
            request.answer.set_exception(
                ReloadError("the capture is stopping", status=503, restored=False))
            return
        self.reloads += 1
        try:
            await self._launch(request.cls, request.config)
        except Exception as error:
            reason = _reason(error)
            log.warning("reload: the new %s configuration did not start (%s); starting the "
                        "previous one again", request.cls.name, reason)
            try:
                await self._launch(old_cls, old_config)
            except Exception as second:
                self.state = State.FAILED
                self.last_reload = ReloadRecord(request.cls.name, False, reason,
                                                time.monotonic() - began)
                request.answer.set_exception(ReloadError(
                    f"{reason}; the previous configuration did not start again either: "
                    f"{_reason(second)}", status=500, restored=False))
                raise
            self.last_reload = ReloadRecord(request.cls.name, False, reason,
                                            time.monotonic() - began)
            request.answer.set_exception(ReloadError(
                f"{reason}; the previous configuration runs again", status=422, restored=True))
            return
        self.last_reload = ReloadRecord(request.cls.name, True, None, time.monotonic() - began)
        log.info("reload: %s running with the new configuration (%.2f s without capture)",
                 request.cls.name, self.last_reload.gap_s)
        request.answer.set_result(self.status())

    async def _launch(self, cls: ModuleClass, config: GlobalConfig) -> None:
        """Build a module from `config` alone, init and start it, run it in a thread."""
        import asyncio

        module, init_and_start = self._new_module(cls, config)
        try:
            await asyncio.to_thread(init_and_start)
        except BaseException:
            self._retired(module)
            raise
        self._running(module, config)
        self._run_task = asyncio.ensure_future(asyncio.to_thread(module.run))

    def _new_module(
        self, cls: ModuleClass, config: GlobalConfig,
    ) -> tuple[Module, Callable[[], None]]:
        """A module built from `config` alone, and what inits and starts it
        (closing it when either fails), to run in a worker thread."""
        assert self.output is not None
        module = cls(config)
        writers = self.output.lend(module.name)

        def init_and_start() -> None:
            try:
                module.init(writers)
                module.start()
            except BaseException:
                module.close()
                raise

        return module, init_and_start

    def _running(self, module: Module, config: GlobalConfig) -> None:
        self.module, self.module_name, self.config = module, module.name, config
        self.probes = _probe_labels(module)
        self.state = State.RUNNING

    async def _retire(self) -> None:
        """Stop the running module, wait for its run(), then drain and close it."""
        import asyncio

        module, run = self.module, self._run_task
        if module is None:
            return
        if not module.stopping:  # a second stop() would cut the drain short
            module.stop()
        failure: BaseException | None = None
        if run is not None:
            try:
                await run
            except BaseException as error:  # closed below all the same
                failure = error
        self._run_task = None
        try:
            await asyncio.to_thread(module.close)
        finally:
            self._retired(module)
            self.module = None
        if failure is not None:
            raise failure

    def _retired(self, module: Module) -> None:
        counters = module.counters
        if counters is not None:
            add_counters(self._past, counters)

    # ----- without the API: threads, no event loop ----------------------------------

    def run_alone(self) -> int:
        """run() without `serve`: start the module, wait for a signal (or the end of
        its run(), a failed sink), stop, drain and close it; on threads.

        As in run(), init/start and close run in a worker thread and the module's
        run() in another, while this (the main) thread waits and handles
        SIGINT/SIGTERM; it waits on a pipe that a signal (set_wakeup_fd, as
        asyncio's loop does) and each worker's end write to: a signal the kernel
        hands to another thread still wakes it."""
        self._stop = threading.Event()
        cls, config = self._first
        self.output = Output(config, cls.name)
        run: _Worker | None = None
        try:
            with _Wakeup(signals=self._signals) as wakeup:
                previous = self._install_thread_signals()
                try:
                    module, init_and_start = self._new_module(cls, config)
                    try:
                        wakeup.result(_Worker(init_and_start, "ecapture-start", wakeup))
                    except BaseException:
                        self._retired(module)
                        raise
                    self._running(module, config)
                    run = _Worker(module.run, "ecapture-run", wakeup)
                    # Until a signal (a stop during the start: at once) or run()'s end.
                    while not self._stop.is_set() and not run.done:
                        wakeup.wait()
                finally:
                    self.state = State.STOPPING
                    self._retire_alone(run, wakeup)
                    self._restore_thread_signals(previous)
        finally:
            if self.state is not State.FAILED:
                self.state = State.STOPPED
            self.output.close()
        return 0

    def _retire_alone(self, run: _Worker | None, wakeup: _Wakeup) -> None:
        """_retire() on threads."""
        module = self.module
        if module is None:
            return
        if not module.stopping:  # a second stop() would cut the drain short
            module.stop()
        failure: BaseException | None = None
        if run is not None:
            try:
                wakeup.result(run)
            except BaseException as error:  # closed below all the same
                failure = error
        try:
            wakeup.result(_Worker(module.close, "ecapture-close", wakeup))
        finally:
            self._retired(module)
            self.module = None
        if failure is not None:
            raise failure

    def _install_thread_signals(self) -> dict[int, Any]:
        """signal.signal() handlers (the main thread's), the previous ones returned."""
        def handler(signum: int, _frame: FrameType | None) -> None:
            self.signal_stop(signum)

        if not self._signals:
            return {}
        return {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_thread_signals(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            if handler is not None:  # None: not installed from Python; ours stays
                signal.signal(signum, handler)

    # ----- requests ---------------------------------------------------------------------

    async def reload(self, cls: ModuleClass, config: GlobalConfig) -> dict[str, Any]:
        """Queue a reload and wait for its outcome: the new status, or ReloadError."""
        if self._requests is None or self._loop is None or self.state in (
                State.STOPPING, State.STOPPED, State.FAILED):
            raise ReloadError("the capture is stopping", status=503, restored=False)
        answer: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        await self._requests.put(_Reload(cls, config, answer))
        return await answer

    def _answer_pending(self, reason: str) -> None:
        queue = self._requests
        while queue is not None and not queue.empty():
            request = queue.get_nowait()
            if not request.answer.done():
                request.answer.set_exception(ReloadError(reason, status=503, restored=False))

    def counters(self) -> PipelineCounters:
        """Everything counted since the capture began, across reloads."""
        total = PipelineCounters()
        add_counters(total, self._past)
        module = self.module
        current = None if module is None else module.counters
        if current is not None:
            add_counters(total, current)
        return total

    def status(self) -> dict[str, Any]:
        module = self.module
        counters = self.counters()
        last = self.last_reload
        return {
            "module": self.module_name,
            "state": self.state.value,
            "config": config_json(self.config),
            "libraries": [] if module is None else _libraries(module),
            "probes_attached": 0 if module is None else module.links_attached,
            "probes": self.probes,
            "counters": {
                "records": counters.records,
                "bytes": counters.data_bytes,
                "exchanges": counters.http_exchanges,
                "connections_closed": counters.connections_closed,
                "items": dict(sorted(counters.items.items())),
                "losses": {reason.value: {"records": totals.records, "bytes": totals.bytes}
                           for reason, totals in sorted(counters.lost.items())},
            },
            "uptime_s": round(time.monotonic() - self.started, 3),
            "reloads": self.reloads,
            "last_reload": None if last is None else {
                "module": last.module, "succeeded": last.succeeded, "error": last.error,
                "gap_s": round(last.gap_s, 3),
            },
            "event_clients": 0 if self.output is None else self.output.tap.subscribers,
        }

    # ----- signals ----------------------------------------------------------------------

    def _install_signals(self) -> None:
        # Explicit: a process started in the background by a shell inherits
        # SIGINT ignored, and Python then installs no handler of its own.
        assert self._loop is not None
        for signum in (signal.SIGINT, signal.SIGTERM) if self._signals else ():
            self._loop.add_signal_handler(signum, self.signal_stop, signum)

    def _remove_signals(self) -> None:
        assert self._loop is not None
        for signum in (signal.SIGINT, signal.SIGTERM) if self._signals else ():
            self._loop.remove_signal_handler(signum)

    def signal_stop(self, signum: int) -> None:
        """SIGINT/SIGTERM: stop; a second one also ends the drain at once."""
        assert self._stop is not None
        name = signal.Signals(signum).name
        if self._stop.is_set():
            log.warning("%s again: stopping now; what the ring still holds is counted as lost",
                        name)
        else:
            log.info("stopping (%s); a second signal stops without waiting for the ring", name)
        self._stop.set()
        if self.module is not None:
            self.module.stop()

    def _log_summary(self) -> None:
        counters = self.counters()
        losses = ", ".join(
            f"{reason.value} {totals.records} records/{totals.bytes} bytes"
            for reason, totals in sorted(counters.lost.items())) or "none"
        log.info("capture summary over %d reloads: %d records, %d payload bytes, %d http "
                 "exchanges; lost or cut: %s", self.reloads, counters.records,
                 counters.data_bytes, counters.http_exchanges, losses)


class _Wakeup:
    """What run_alone()'s main thread waits on: a pipe written by a signal
    (signal.set_wakeup_fd, whichever thread the kernel hands it to) and by the
    end of each worker. A signal's Python handler runs in the main thread only,
    once it executes again: blocked in a lock (Thread.join) it may not, when
    the kernel picks another thread for the signal."""

    def __init__(self, *, signals: bool) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._signals = signals
        self._previous = -1

    def __enter__(self) -> _Wakeup:
        if self._signals:
            self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._signals:
            signal.set_wakeup_fd(self._previous)
        os.close(self._read)
        os.close(self._write)

    def wake(self) -> None:
        # Full (a wake-up is already pending) or closed (the capture is over): no loss.
        with contextlib.suppress(OSError):
            os.write(self._write, b"\0")

    def wait(self) -> None:
        """Until a signal or a worker's end (or what was written before)."""
        select.select([self._read], [], [])
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass

    def result(self, worker: _Worker) -> None:
        """Wait for `worker` (signals handled meanwhile); raise what it raised."""
        while not worker.done:
            self.wait()
        worker.raise_error()


class _Worker:
    """A function run in its own thread; its end wakes the main thread."""

    def __init__(self, function: Callable[[], None], name: str, wakeup: _Wakeup) -> None:
        self._function = function
        self._wakeup = wakeup
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._function()
        except BaseException as error:  # raised by raise_error(), in the main thread
            self._error = error
        finally:
            self._done.set()
            self._wakeup.wake()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def raise_error(self) -> None:
        self._thread.join()  # it is past its function: at once
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _reason(error: BaseException) -> str:
    if isinstance(error, EcaptureError):
        return str(error)
    log.error("a module failed to start with a bug", exc_info=error)
    return f"{type(error).__name__}: {error}"


def _probe_labels(module: Module) -> list[str]:
    try:
        steps = module.attach_steps()
    except Exception:  # a status detail must not break a running capture
        return []
    return [step.label or getattr(step, "program", "") for step in steps]


def _libraries(module: Module) -> list[dict[str, Any]]:
    """The files probed, with the version found where the module knows it."""
    versions: dict[str, str] = {}
    for library in getattr(module, "libraries", ()):
        path, version = getattr(library, "path", None), getattr(library, "version", None)
        if path is not None:
            versions[str(path)] = str(version) if version is not None else ""
    paths: dict[str, None] = {}
    try:
        for step in module.attach_steps():
            binary = getattr(step, "binary", None)
            if binary is not None:
                paths[str(binary)] = None
    except Exception:  # as above
        pass
    for path in versions:
        paths.setdefault(path, None)
    return [{"path": path, "version": versions.get(path) or None} for path in paths]
