"""Hostile cfRefs and item cfRefs, archived through the real pipeline onto the real filesystem."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from casefetch_tools.redis_server import RedisServer
from tests import samples
from tests.pipeline_harness import Harness, harness
from tests.recording_server import RecordingServer, Reply
from worker import archive
from worker.storage import LocalStorage

HOSTILE = [
    "..",
    ".",
    "../../outside",
    "../../../../../../tmp/escaped",
    "/etc/passwd",
    "/",
    "a/b",
    "a\\b",
    "..\\..\\outside",
    "C:\\Windows\\win.ini",
    "nul\x00byte",
    "x" * 10_000,
    ".tmp",
    ".hidden",
    "quarantine/../../x",
    "%2e%2e%2f",
    "CF 1",
    "~root",
    "_CF-1",
    "\uff23\uff26-1",  # fullwidth look-alike of CF-1
    "\u0421F-1",  # Cyrillic Es: looks like CF-1
    "CF-1\u200b",  # zero-width space
    "CF\u22121",  # minus sign, not a hyphen
    "\ud800",  # a lone surrogate (JSON allows it as an escape)
    "CF-1",  # the genuine one, last: nothing may have taken its folder
]


@pytest.fixture(scope="module")
def file_server() -> Iterator[RecordingServer]:
    running = RecordingServer().start()
    yield running
    running.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    return tmp_path / "work" / "archive"


@pytest.fixture
def pipe(root: Path, redis_server: RedisServer) -> Iterator[Harness]:
    built = harness(root, redis_server.url)
    yield built
    built.client.close()


def files_under(path: Path) -> set[Path]:
    return {Path(dirpath) / name for dirpath, _dirs, names in os.walk(path) for name in names}


def test_hostile_case_refs_stay_in_their_own_folder(
    pipe: Harness, root: Path, file_server: RecordingServer
) -> None:
    pdf_url = file_server.add("paths/case.pdf", Reply(body=samples.pdf()))
    png_url = file_server.add("paths/item.png", Reply(body=samples.png()))
    for cf_ref in HOSTILE:
        items = [samples.item(ref, png_url) for ref in HOSTILE[:6]]
        # ASCII escapes, so the lone surrogate travels as JSON allows (\ud800)
        pipe.deliver(json.dumps(samples.case(cf_ref, pdf_url, items)).encode())

    tmp = root.parent.parent
    assert files_under(tmp) == files_under(root)  # nothing written outside the archive root
    manifests = pipe.manifests()
    assert sorted(m["cfRef"] for m in manifests) == sorted(HOSTILE)  # none overwrote another
    folders = {p.parent for p in root.glob("cases/*/manifest.json")}
    assert len(folders) == len(HOSTILE)
    for folder in folders:
        assert folder.parent == root / "cases"
        assert archive._SAFE.fullmatch(folder.name) and len(folder.name) <= archive.MAX_NAME
        assert (folder / "case.pdf").read_bytes() == samples.pdf()
        assert len(list((folder / "items").iterdir())) == 6
    assert (root / "cases" / "CF-1" / "manifest.json").exists()  # the contract's layout
    for manifest in manifests:
        assert manifest["status"] == "complete", manifest
        assert [f["itemCfRef"] for f in manifest["files"][1:]] == HOSTILE[:6]


class CaseInsensitiveStorage(LocalStorage):
    """Local storage that folds case as macOS's and Windows' default disks do."""

    def path(self, key: str) -> Path:
        return super().path(key.lower())


def test_refs_differing_only_by_case_never_share_a_folder_on_a_case_insensitive_disk(
    root: Path, redis_server: RedisServer, file_server: RecordingServer
) -> None:
    pipe = harness(root, redis_server.url, CaseInsensitiveStorage(root))
    pdf_url = file_server.add("ci/case.pdf", Reply(body=samples.pdf()))
    refs = ["CF-CI-1", "cf-ci-1", "Cf-Ci-1"]
    bodies = {
        ref: samples.body(samples.case(ref, pdf_url, [samples.item("IT", None)])) for ref in refs
    }
    for ref in refs:
        pipe.deliver(bodies[ref])
    pipe.deliver(bodies["cf-ci-1"])  # a re-delivery finds its own folder again

    folders = sorted(p.name for p in (root / "cases").iterdir())
    assert len(folders) == 3 and "cf-ci-1" in folders  # the first keeps the plain name
    for ref in refs:
        [folder] = [f for f in folders if (pipe.manifest(f"cases/{f}") or {}).get("cfRef") == ref]
        assert (root / "cases" / folder / "case.json").read_bytes() == bodies[ref]
        assert not (root / "cases" / folder / "history").exists()
    pipe.client.close()


def test_refs_differing_only_by_case_keep_plain_names_on_a_case_sensitive_disk(
    pipe: Harness, root: Path, file_server: RecordingServer
) -> None:
    pdf_url = file_server.add("cs/case.pdf", Reply(body=samples.pdf()))
    for ref in ["CF-CS-1", "cf-cs-1"]:
        pipe.deliver(samples.body(samples.case(ref, pdf_url)))
    assert sorted(p.name for p in (root / "cases").iterdir()) == ["CF-CS-1", "cf-cs-1"]


@pytest.mark.parametrize("name", HOSTILE)
def test_every_hostile_name_encodes_to_one_safe_path_component(name: str) -> None:
    encoded = archive.safe_name(name)
    assert archive._SAFE.fullmatch(encoded)
    assert encoded not in {".", ".."} and len(encoded.encode()) <= archive.MAX_NAME
    assert (encoded == name) == (name == "CF-1")


def test_forced_encoding_differs_from_every_kept_name() -> None:
    assert archive.safe_name("CF-1", encode=True).startswith("_CF-1.")
    assert archive.safe_name("CF-1", encode=True) != archive.safe_name("cf-1", encode=True)
    assert (
        archive.safe_name("CF-1", encode=True).lower()
        != archive.safe_name("cf-1", encode=True).lower()
    )


def test_readers_know_both_places_a_case_may_be() -> None:
    assert archive.case_dirs("CF-1") == ("cases/CF-1", archive.case_dir("CF-1", encode=True))
    assert archive.case_dirs("../x") == (archive.case_dir("../x"),)
