"""The schemas' one piece of process state: marshmallow's URL expression, built once."""

from __future__ import annotations

from marshmallow import validate

from worker.schemas import check_case, warm_up


def test_warm_up_builds_the_url_expression_that_cases_then_reuse() -> None:
    # marshmallow keeps the expression in a class-level memo: cleared, the next use builds it.
    memo = validate.URL._regex._memoized
    memo.clear()
    warm_up()
    built = dict(memo)
    assert built
    check_case(
        {
            "cfRef": "CF-1",
            "reportId": "R-1",
            "caseUrl": "http://files/case.pdf",
            "createdAt": "2026-11-28T10:00:00.000Z",
            "items": [],
        }
    )
    assert memo == built and all(memo[k] is built[k] for k in built)
