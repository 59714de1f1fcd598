"""The registry reads entry points as importlib.metadata does, without importing it
(modules/registry.py entry_points): the same names, values and order."""

from __future__ import annotations

import importlib.metadata
import sys
import zipfile
from pathlib import Path

import pytest

from ecapture.modules import registry


def metadata(group: str) -> list[tuple[str, str]]:
    return [(entry.name, entry.value) for entry in importlib.metadata.entry_points(group=group)]


def distribution(root: Path, directory: str, entry_points: str | None) -> None:
    info = root / directory
    info.mkdir(parents=True)
    name = directory.partition("-")[0]
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def test_every_group_of_this_environment_reads_the_same() -> None:
    groups = {entry.group for dist in importlib.metadata.distributions()
              for entry in dist.entry_points}
    assert "console_scripts" in groups
    for group in sorted(groups):
        assert registry._read_entry_points(group) == metadata(group), group


def test_order_duplicates_and_odd_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    distribution(first, "Plugin.One-1.0.dist-info",
                 "# a comment\n\n[ecapture.modules]\n  one = one.mod:Thing.attr  \n"
                 "[other]\nx = y\n[ecapture.modules]\nbare=bare\n")
    distribution(first, "no_points-2.0.dist-info", None)  # listed, no entry_points.txt
    distribution(second, "plugin_one-9.9.dist-info",  # the same name later: never read
                 "[ecapture.modules]\nshadowed = shadowed\n")
    distribution(second, "No.Points-1.0.dist-info",  # shadowed by one without entry points
                 "[ecapture.modules]\nhidden = hidden\n")
    distribution(second, "no-points-1.0.dist-info",  # its name ends at the first "-": "no"
                 "[ecapture.modules]\nno = no\n")
    distribution(second, "later-1.0.egg-info", "[ecapture.modules]\nlater = later:x [extra]\n")
    (second / "file-1.0.egg-info").write_text("PKG-INFO as a file\n")
    monkeypatch.setattr(sys, "path", [str(first), str(tmp_path / "missing"), str(second)])
    expected = sorted([("one", "one.mod:Thing.attr"), ("bare", "bare"),
                       ("later", "later:x [extra]"), ("no", "no")])
    found = registry.entry_points("ecapture.modules")
    assert found == metadata("ecapture.modules")  # the same order too
    assert sorted(found) == expected
    assert registry._read_entry_points("other") == metadata("other") == [("x", "y")]


def test_a_zip_archive_on_the_path_is_left_to_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped\n")
        zipped.writestr("zipped-1.0.dist-info/entry_points.txt",
                        "[ecapture.modules]\nzipped = zipped\n")
    monkeypatch.setattr(sys, "path", [str(archive)])
    with pytest.raises(registry._Unread):
        registry._read_entry_points("ecapture.modules")
    assert registry.entry_points("ecapture.modules") == [("zipped", "zipped")]


def test_load_entry_point_as_importlib_metadata() -> None:
    assert registry.load_entry_point("os.path") is importlib.import_module("os.path")
    assert registry.load_entry_point("os:path.join") is importlib.import_module("os.path").join
    assert registry.load_entry_point("os : path [extra]") is importlib.import_module("os.path")
    with pytest.raises(AttributeError):
        registry.load_entry_point("not a value")
    with pytest.raises(ImportError):
        registry.load_entry_point("no_such_module_here:thing")
