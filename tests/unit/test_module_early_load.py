"""Module.objects_before_prepare: the BPF objects load in a thread while prepare()
runs, and start() takes them (no root: the loads are fakes)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from ecapture.config import GlobalConfig
from ecapture.errors import BpfLoadError, LibraryNotFound
from ecapture.modules import base
from ecapture.modules.base import Module, ModuleState
from ecapture.modules.parts import BpfObject


@dataclass
class FakeLoaded:
    """What _load_object hands back: only closing matters here."""

    name: str
    closed: bool = False

    def close(self) -> None:
        self.closed = True

    def detach(self) -> None:
        pass


@dataclass
class Loads:
    made: list[FakeLoaded] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    fail: bool = False


class EarlyModule(Module):
    """Two objects, no readers, no attach steps."""

    name: ClassVar[str] = "early-test"
    stats_layout = None
    objects_before_prepare: ClassVar[bool] = True

    def __init__(self, config: GlobalConfig, loads: Loads, *, prepare_fails: bool = False,
                 constants_change: bool = False) -> None:
        super().__init__(config)
        self.loads = loads
        self.prepare_fails = prepare_fails
        self.constants_change = constants_change
        self.prepared = False

    def bpf_objects(self) -> Sequence[BpfObject]:
        return (BpfObject("one.bpf.o", readers=()), BpfObject("two.bpf.o", readers=()))

    def constants(self) -> Mapping[str, int | bytes]:
        values = dict(super().constants())
        if self.constants_change and self.prepared:
            values["target_pid"] = 4242  # what prepare() found changes an object
        return values

    def prepare(self) -> None:
        # The first load has begun before prepare() returns: they overlap.
        assert self.loads.started.wait(5), "no load started while prepare() ran"
        self.prepared = True
        if self.prepare_fails:
            raise LibraryNotFound("no library (test)")

    def _load_object(
        self, declared: BpfObject, constants: Mapping[str, int | bytes],
    ) -> tuple[FakeLoaded, set[str]]:  # type: ignore[override]
        self.loads.threads.append(threading.current_thread().name)
        self.loads.started.set()
        if self.loads.fail and declared.name == "two.bpf.o":
            raise BpfLoadError("two.bpf.o: the verifier said no (test)")
        loaded = FakeLoaded(declared.name)
        self.loads.made.append(loaded)
        return loaded, set(constants) & set(base.FILTER_CONSTANTS)


@pytest.fixture(autouse=True)
def no_kernel_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "check_environment", lambda **_: None)


def test_objects_load_during_prepare_and_start_takes_them() -> None:
    loads = Loads()
    module = EarlyModule(GlobalConfig(), loads)
    module.init([])
    module.start()
    assert module.state is ModuleState.STARTED
    assert [loaded.name for loaded in loads.made] == ["one.bpf.o", "two.bpf.o"]  # once
    assert set(loads.threads) == {"bpf-load"}
    assert list(module._objects) == ["one.bpf.o", "two.bpf.o"]
    assert not any(loaded.closed for loaded in loads.made)
    module.close()
    assert all(loaded.closed for loaded in loads.made)


def test_a_failed_prepare_closes_what_was_loaded() -> None:
    loads = Loads()
    module = EarlyModule(GlobalConfig(), loads, prepare_fails=True)
    with pytest.raises(LibraryNotFound):
        module.init([])
    module.close()  # as the controller does after a failed init
    assert len(loads.made) == 2 and all(loaded.closed for loaded in loads.made)


def test_constants_that_changed_in_prepare_load_again() -> None:
    loads = Loads()
    module = EarlyModule(GlobalConfig(), loads, constants_change=True)
    module.init([])
    module.start()
    early, again = loads.made[:2], loads.made[2:]
    assert all(loaded.closed for loaded in early)
    assert [loaded.name for loaded in again] == ["one.bpf.o", "two.bpf.o"]
    assert list(module._objects.values()) == again and not any(o.closed for o in again)
    module.close()


def test_an_early_load_failure_is_raised_by_start_with_nothing_left_open() -> None:
    loads = Loads(fail=True)
    module = EarlyModule(GlobalConfig(), loads)
    module.init([])
    with pytest.raises(BpfLoadError, match="verifier said no"):
        module.start()
    module.close()
    assert [loaded.name for loaded in loads.made] == ["one.bpf.o"]
    assert loads.made[0].closed and not module._objects
