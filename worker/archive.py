"""The archive layout: safe names, keys, and the extension of a file from its content.

Pure functions only. The layout (see the contract)::

    cases/<cfRef>/case.pdf
    cases/<cfRef>/items/<NNN>-<item cfRef>.<ext>
    cases/<cfRef>/case.json
    cases/<cfRef>/history/<deliveryId>.json
    cases/<cfRef>/manifest.json
    cases/<cfRef>/index.html        the case as a page (worker.page), not in the manifest
    quarantine/<deliveryId>.json

A cfRef that is not a safe file name is encoded (:func:`safe_name`). Safe names that differ
only by case (``CF-1``, ``cf-1``) keep their own names on a case-sensitive disk (local Linux
disks, S3); on a case-insensitive one the first to arrive keeps the plain name and the next
gets the encoded one (``Ingest._claim`` sees the folder is taken). Items cannot collide:
their names start with their position.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

CASES = "cases"
QUARANTINE = "quarantine"
CASE_PDF = "case.pdf"
CASE_JSON = "case.json"
MANIFEST = "manifest.json"
INDEX_HTML = "index.html"
#: The catalog of cases (worker.catalog) in a local archive's root, beside ``cases/``.
CATALOG = ".index.sqlite"
HISTORY = "history"
ITEMS = "items"

MAX_NAME = 128
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SLUG_DROP = re.compile(r"[^A-Za-z0-9._-]+")
#: Encoded names start with this; safe names that start with it are encoded too, so an
#: encoded name can never equal a name kept as it is.
_ENCODED_MARK = "_"


def is_safe_name(name: str) -> bool:
    return bool(_SAFE.fullmatch(name)) and not name.startswith(_ENCODED_MARK)


def safe_name(name: str, encode: bool = False) -> str:
    """``name`` itself when it is a safe file name, else a deterministic safe encoding.

    The encoding keeps a readable slug (ASCII letters, digits, ``.``, ``_``, ``-``; at most
    90 characters) and adds a hash of the original, so two different names never share a
    folder, even on a case-insensitive disk, and Unicode look-alikes of a name (fullwidth
    letters, a Cyrillic Es for a C) never take its place. ``encode`` forces the encoding
    of a safe name.
    """
    if is_safe_name(name) and not encode:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _SLUG_DROP.sub("-", ascii_name).strip(".-_")[:64]
    return f"{_ENCODED_MARK}{slug}.{digest}" if slug else f"{_ENCODED_MARK}{digest}"


def case_dir(cf_ref: str, encode: bool = False) -> str:
    """``cases/<cfRef>``; see ``Ingest._claim`` for when ``encode`` is needed."""
    return f"{CASES}/{safe_name(cf_ref, encode)}"


def case_dirs(cf_ref: str) -> tuple[str, ...]:
    """Where a case may be: its own folder or, when a case-insensitive disk had it taken by
    another cfRef, its encoded one. A reader picks the one whose manifest has this cfRef."""
    return tuple(dict.fromkeys((case_dir(cf_ref), case_dir(cf_ref, encode=True))))


def case_key(case_folder: str, relative: str) -> str:
    return f"{case_folder}/{relative}"


def item_stem(position: int, item_cf_ref: str) -> str:
    """Path of an item's image relative to its case, without the extension."""
    return f"{ITEMS}/{position:03d}-{safe_name(item_cf_ref)}"


def history_path(delivery_id: str) -> str:
    return f"{HISTORY}/{safe_name(delivery_id)}.json"


def quarantine_key(delivery_id: str) -> str:
    return f"{QUARANTINE}/{safe_name(delivery_id)}.json"
