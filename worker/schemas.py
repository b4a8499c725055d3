"""The platform's case and item, as marshmallow schemas.

Unknown fields are kept (``unknown = INCLUDE``): the archive stores the payload as received,
and the schemas only decide what can be archived. A case that fails :class:`CaseSchema` is
quarantined: only what it cannot be archived without (cfRef, reportId, caseUrl, createdAt,
items as a list). Fields the archive only keeps (frame, closed, an item's data, description
and geoloc) are accepted whatever their JSON type. An item that fails :class:`ItemSchema` is
a warning in the manifest and the case goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, pre_load, validate

from worker.errors import Unarchivable
from worker.urls import InvalidUrl, request_url

#: More items than this are not a certificate but an attack on the validator.
MAX_ITEMS = 10_000


class StepAction(str, Enum):
    DATE_FIELD = "DATE_FIELD"
    EMAIL = "EMAIL"
    NUMBER_FIELD = "NUMBER_FIELD"
    PHOTOGRAPHY = "PHOTOGRAPHY"
    VIDEO = "VIDEO"
    TEXT_FIELD = "TEXT_FIELD"
    TIME = "TIME"
    SELECT = "SELECT"
    SIGNATURE = "SIGNATURE"


class HttpUrl(fields.String):
    """An http(s) URL as a browser takes it: non-ASCII characters and an IDN host are
    valid (they are escaped when the file is requested). The value is kept as sent."""

    default_error_messages = {"invalid": "Not a valid URL."}
    _valid = validate.URL(schemes={"http", "https"}, require_tld=False)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            self._valid(request_url(text))
        except (InvalidUrl, ValidationError):
            raise self.make_error("invalid") from None
        return text


def _kept(**kwargs: Any) -> fields.Raw:
    """A field the archive keeps as sent, of any JSON type."""
    return fields.Raw(allow_none=True, **kwargs)


class ItemSchema(Schema):
    class Meta:
        unknown = INCLUDE

    cfRef = fields.String(required=True, validate=validate.Length(min=1))
    createdAt = fields.DateTime(required=True)
    stepAction = fields.Enum(StepAction, by_value=True, required=True)
    description = _kept()
    geolocLatitude = _kept()
    geolocLongitude = _kept()
    data = _kept()
    imageUrl = HttpUrl(allow_none=True)

    @pre_load
    def empty_url_is_none(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and data.get("imageUrl") == "":
            return {**data, "imageUrl": None}
        return data


class CaseSchema(Schema):
    class Meta:
        unknown = INCLUDE

    cfRef = fields.String(required=True, validate=validate.Length(min=1))
    reportId = fields.String(required=True, validate=validate.Length(min=1))
    caseUrl = HttpUrl(required=True)
    createdAt = fields.DateTime(required=True)
    frame = _kept()
    closed = _kept()
    # Items are validated one by one (ItemSchema), so one bad item cannot lose the case.
    items = fields.List(fields.Raw(), required=True, validate=validate.Length(max=MAX_ITEMS))


@dataclass
class ItemCheck:
    """One item as the archive sees it: where its image is, and what is wrong with it."""

    position: int
    cf_ref: str | None
    step_action: str | None
    image_url: str | None
    errors: dict[str, Any] = field(default_factory=dict)
    #: The imageUrl as sent when it is not a valid URL (recorded as a failed file).
    bad_image_url: str | None = None


@dataclass
class CaseCheck:
    cf_ref: str
    report_id: str
    case_url: str
    items: list[ItemCheck]


_CASE = CaseSchema()
_ITEM = ItemSchema()


def check_item(position: int, raw: Any) -> ItemCheck:
    if not isinstance(raw, dict):
        return ItemCheck(position, None, None, None, {"_schema": ["Item is not an object."]})
    errors: dict[str, Any] = {}
    try:
        _ITEM.load(raw)
    except ValidationError as exc:
        errors = exc.normalized_messages()  # type: ignore[no-untyped-call]
    cf_ref = raw.get("cfRef") if isinstance(raw.get("cfRef"), str) and raw["cfRef"] else None
    step = raw.get("stepAction") if isinstance(raw.get("stepAction"), str) else None
    url = raw.get("imageUrl")
    has_url = isinstance(url, str) and url != ""
    if has_url and "imageUrl" not in errors:
        return ItemCheck(position, cf_ref, step, url, errors)
    bad_url = url if has_url else (None if url is None else str(url))
    return ItemCheck(position, cf_ref, step, None, errors, bad_url or None)


#: A case every rule accepts, for :func:`warm_up`.
_WARM_UP_CASE = {
    "cfRef": "warm-up",
    "reportId": "warm-up",
    "caseUrl": "https://warm.up/case.pdf",
    "createdAt": "2026-01-01T00:00:00.000Z",
    "items": [
        {
            "cfRef": "warm-up",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "stepAction": "PHOTOGRAPHY",
            "imageUrl": "https://warm.up/1.jpg",
        }
    ],
}


def warm_up() -> None:
    """Validate one case now, so that the first deliveries do not pay for it.

    marshmallow builds its URL expression on first use, and without a lock: the task threads
    of a worker that meet their first cases together each built their own while those cases
    waited (docs/benchmarks.md#schemas-warm-up)."""
    check_case(_WARM_UP_CASE)


def check_case(payload: Any) -> CaseCheck:
    """Validate a decoded payload; raise Unarchivable when it cannot be archived."""
    if not isinstance(payload, dict):
        raise Unarchivable("not_an_object", {"_schema": ["Payload is not a JSON object."]})
    try:
        _CASE.load(payload)
    except ValidationError as exc:
        raise Unarchivable("invalid_case", exc.normalized_messages()) from exc  # type: ignore[no-untyped-call]
    items = [check_item(i, raw) for i, raw in enumerate(payload["items"], start=1)]
    return CaseCheck(payload["cfRef"], payload["reportId"], payload["caseUrl"], items)
