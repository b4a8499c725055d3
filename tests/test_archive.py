"""Pure units: archive names, keys and the manifest rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casefetch.codec import pretty as _dumps
from worker import archive
from worker.errors import StorageError
from worker.manifest import case_status
from worker.storage import LocalStorage, check_key


@pytest.mark.parametrize("name", ["CF-1", "cf_2.v3", "A" * 128, "0abc"])
def test_safe_names_are_kept(name: str) -> None:
    assert archive.safe_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../etc",
        "a/b",
        "a\\b",
        ".hidden",
        "",
        "x" * 129,
        "nul\x00",
        "/abs",
        "Ünïcödé",
        "_looks-encoded",
        "CF 1",
        "\uff41\uff42\uff43",
    ],
)
def test_unsafe_names_are_encoded_into_safe_ones(name: str) -> None:
    encoded = archive.safe_name(name)
    assert encoded != name
    assert archive._SAFE.fullmatch(encoded)
    assert archive.safe_name(name) == encoded  # deterministic
    assert "/" not in encoded and ".." not in encoded.split(".")


def test_encodings_never_collide_with_each_other_or_with_safe_names() -> None:
    names = ["a/b", "a\\b", "a b", "a:b", "_a-b", "a-b"]
    assert len({archive.safe_name(n) for n in names}) == len(names)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "a/./b", ""])
def test_storage_refuses_unsafe_keys(key: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        check_key(key)
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).write_bytes(key, b"x")


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(RuntimeError), storage.open_writer("cases/A/case.pdf") as writer:
        writer.write(b"%PDF-partial")
        raise RuntimeError("connection lost")
    assert not (tmp_path / "cases/A/case.pdf").exists()
    assert not list((tmp_path / ".tmp").iterdir())
    storage.write_bytes("cases/A/case.pdf", b"whole")
    assert storage.read_bytes("cases/A/case.pdf") == b"whole"
    assert sorted(storage.list("cases/")) == ["cases/A/case.pdf"]


def test_case_status() -> None:
    stored = {"status": "stored"}
    assert case_status({"files": [stored], "warnings": []}).value == "complete"
    assert (
        case_status({"files": [stored, {"status": "failed"}], "warnings": []}).value == "incomplete"
    )
    assert (
        case_status({"files": [stored, {"status": "pending"}], "warnings": []}).value == "pending"
    )
    # Status speaks of files only: a warning never makes a case incomplete.
    assert case_status({"files": [stored], "warnings": [{"item": 1}]}).value == "complete"
    assert (
        case_status({"files": [stored, {"status": "failed"}], "warnings": [{"item": 1}]}).value
        == "incomplete"
    )


@pytest.mark.parametrize(
    "value",
    [
        {
            "cfRef": "CF-é✓\u2028",
            "files": [
                {"a": None, "b": True, "c": 1234567, "d": [], "e": {}, "f": 'tab\t"q" \x7f \x01 😀'}
            ],
            "warnings": [],
        },
        {"x": 1.5, "y": [1, [2, {}]], "z": ""},
        {"lone": "\ud800"},
        {"big": 2**70},
    ],
)
def test_manifests_are_written_as_json_would_write_them(value: dict[str, object]) -> None:
    try:
        expected = json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8")
    except UnicodeEncodeError:
        expected = json.dumps(value, indent=2).encode("ascii")
    assert _dumps(value) == expected
