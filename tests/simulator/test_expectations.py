"""The expectation language: parsed once with errors that name the expression, evaluated purely
against a report dict (§9 keys), three-valued so that what was not measured never passes."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.expectations import (
    ExpectationError,
    Literal,
    Metric,
    check,
    evaluate,
    parse,
    value_of,
)
from simulator.plan.model import Expectation

REPORT: dict[str, Any] = {
    "requests": {
        "checkin": {
            "count": 1000,
            "errors": {"http_5xx": 1, "timeout": 1},
            "latency_ms": {"p50": 2.5, "p90": 8.0, "p99": 31.0, "p999": 60.0, "max": 95.0},
        },
        "ota/next": {
            "count": 1000,
            "errors": {},
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 4.0, "max": 5.0},
        },
        "admin:profile/save": {
            "count": 2,
            "errors": {},
            "latency_ms": {"p50": 9.0, "p90": 9.0, "p99": 9.0, "p999": 9.0, "max": 9.0},
        },
    },
    "convergence": {
        "rollout": {
            "scoped": 100,
            "applied": 99,
            "failed": 1,
            "deferred": 3,
            "fraction": 0.99,
            "t50_s": 12.0,
            "t90_s": 40.0,
            "t99_s": 110.5,
        },
        "late": {
            "scoped": 10,
            "applied": 5,
            "failed": 0,
            "deferred": 0,
            "fraction": 0.5,
            "t50_s": 3.0,
            "t90_s": None,
            "t99_s": None,
        },
    },
    "devices": {"planned": 1000, "enrolled": 998, "failed": 2, "saved_twice": 0},
    "consistency": {"checked": 998, "mismatches": [{"serial": "s1", "field": "build"}]},
    "generator": {"saturated": False, "send_lag_ms": {"p50": 0.2, "p99": 1.5, "max": 4.0}},
    "events": {"lost": 0, "duplicated": 0},
}


@pytest.mark.parametrize(
    ("expr", "passed", "observed"),
    [
        ('requests["checkin"].p99_ms < 50', True, 31.0),
        ('requests["checkin"].p99_ms < 31', False, 31.0),
        ('requests["checkin"].p99_ms <= 31', True, 31.0),
        ('requests["checkin"].p999_ms > 50', True, 60.0),
        ('requests["checkin"].max_ms >= 95', True, 95.0),
        ('requests["checkin"].count == 1000', True, 1000),
        ('requests["checkin"].errors != 0', True, 2),
        ("requests['ota/next'].p90_ms == 2", True, 2),
        ('requests["admin:profile/save"].p50_ms < 10', True, 9),
        ('requests["apps"].count == 0', True, 0),  # never called: zero calls
        ('requests["apps"].p99_ms < 50', False, None),  # never called: not measured
        ("errors.rate < 0.001", True, 0.000999001),  # 2 of 2002, to 6 digits
        ("errors.rate < 0.0009", False, 0.000999001),
        ("errors.count == 2", True, 2),
        ('convergence("rollout").t99_s < 120', True, 110.5),
        ('convergence("rollout").t90_s < 30', False, 40),
        ('convergence("rollout").fraction >= 0.99', True, 0.99),
        ('convergence("rollout").applied == 99', True, 99),
        ('convergence("rollout").failed <= 1', True, 1),
        ('convergence("rollout").deferred > 0', True, 3),
        ('convergence("late").t90_s < 1000', False, None),  # 90 % never applied
        ('convergence("nobody").applied == 0', True, 0),
        ("devices.saved_twice == 0", True, 0),
        ("devices.enrolled >= 0.99 * 1000", None, None),  # no arithmetic: a parse error
        ("consistency.mismatches == 0", False, 1),
        ("consistency.checked > 0", True, 998),
        ("generator.saturated == false", True, False),
        ("not generator.saturated", True, False),
        ("generator.saturated", False, False),
        ("generator.send_lag_p99_ms < 10", True, 1.5),
        (
            "events.lost == 0 and events.duplicated == 0",
            True,
            {"events.lost": 0, "events.duplicated": 0},
        ),
        ("events.lost > 0 or devices.failed < 5", True, {"events.lost": 0, "devices.failed": 2}),
        ("not (events.lost > 0)", True, 0),
        ("1 < 2", True, {}),
        ("true", True, {}),
        ("-1 < devices.failed", True, 2),
        ("devices.failed < 2.5e0", True, 2),
    ],
)
def test_expressions_against_a_report(expr: str, passed: bool | None, observed: Any) -> None:
    """Each metric path reads the report; `observed` is what it read."""
    if passed is None:
        with pytest.raises(ExpectationError):
            parse(expr)
        return
    (result,) = check([Expectation(name="e", expr=expr)], REPORT)
    assert result == {"name": "e", "expr": expr, "passed": passed, "observed": observed}


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "empty expression"),
        ("   ", "empty expression"),
        ('requests["checkin"].p99_ms <', "expected a number or a metric, found the end"),
        ('requests["chekin"].p99_ms < 5', "unknown endpoint 'chekin'"),
        ('requests["checkin"].p98_ms < 5', "unknown field 'p98_ms' of requests"),
        ("requests.checkin.p99_ms < 5", "expected '['"),
        ("requests[checkin].p99_ms < 5", "takes a quoted name"),
        ('convergence["x"].t99_s < 5', "expected '('"),
        ("latency.p99 < 5", "unknown metric 'latency'"),
        ("errors.rate", "must be a comparison or a yes/no metric"),
        ("errors.rate < 1 < 2", "chained comparisons"),
        ("errors.rate = 1", "unexpected '='"),
        ("errors.rate < true", "compares numbers"),
        ("generator.saturated == 1", "compares a boolean with a number"),
        ("errors.rate and true", "joins comparisons"),
        ("not errors.rate", "'not' takes a comparison"),
        ("(errors.rate < 1", "expected ')', found the end"),
        ("errors.rate < 1)", "unexpected ')'"),
        ('__import__("os").system("true")', "unknown metric '__import__'"),
        ("errors.rate < 1; x", "unexpected ';'"),
        ("errors.rate < 1 errors.count", "unexpected 'errors'"),
        ("errors.", "unknown field '' of errors"),
    ],
)
def test_bad_expressions_raise_an_error_naming_them(expr: str, message: str) -> None:
    """A parse error names the expectation, the text, the reason and the column."""
    with pytest.raises(ExpectationError) as caught:
        parse(expr, name="latency")
    text = str(caught.value)
    assert text.startswith(f"expectation 'latency': {expr!r}: ")
    assert message in text
    assert caught.value.expr == expr


def test_the_column_points_at_the_fault() -> None:
    with pytest.raises(ExpectationError, match=r"at column 10$") as caught:
        parse('requests["x"].count > 1')
    assert caught.value.column == 9  # the quoted name, 0-based


def test_unknown_profiles_are_refused_when_the_scenario_lists_its_profiles() -> None:
    """The scenario loader passes the profile names its timeline saves."""
    parse('convergence("rollout").t99_s < 60', profiles={"rollout"})
    with pytest.raises(ExpectationError, match=r"unknown profile 'rollot' \(the scenario saves: "):
        parse('convergence("rollot").t99_s < 60', profiles={"rollout", "other"})
    with pytest.raises(ExpectationError, match="saves: none"):
        parse('convergence("x").t99_s < 60', profiles=())


def test_the_tree_lists_the_metrics_it_reads_once_each() -> None:
    e = parse("errors.rate < 1 and (errors.rate >= 0 or not generator.saturated)")
    assert [m.path for m in e.metrics] == ["errors.rate", "generator.saturated"]


@pytest.mark.parametrize(
    ("expr", "values", "result"),
    [
        ("devices.failed < 1", {"devices.failed": None}, None),
        ("not devices.failed < 1", {"devices.failed": None}, None),
        ("devices.failed < 1 or 1 < 2", {"devices.failed": None}, True),
        ("devices.failed < 1 and 1 < 2", {"devices.failed": None}, None),
        ("devices.failed < 1 and 2 < 1", {"devices.failed": None}, False),
        ("devices.failed < 1 or 2 < 1", {"devices.failed": None}, None),
        ("devices.failed < 1", {"devices.failed": 0.0}, True),
    ],
)
def test_unknown_values_use_three_valued_logic(
    expr: str, values: dict[str, float | None], result: bool | None
) -> None:
    """A metric the report lacks is unknown; `not` does not turn unknown into a pass."""
    assert evaluate(parse(expr).root, values) == result


def test_a_missing_figure_fails_the_expectation() -> None:
    """Not measured is not passed (events.lost without the runner's count)."""
    (result,) = check([Expectation(name="n", expr="not events.lost > 0")], {"requests": {}})
    assert result["passed"] is False
    assert result["observed"] is None


def test_value_of_reads_nothing_but_the_report() -> None:
    assert value_of(Metric(group="errors", key=None, field="rate"), {}) == 0.0
    assert value_of(Metric(group="consistency", key=None, field="mismatches"), {}) is None
    assert value_of(Metric(group="generator", key=None, field="saturated"), {}) is None
    assert evaluate(Literal(value=3.0), {}) == 3.0


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_an_expectation_error(text: str) -> None:
    """Nothing but ExpectationError escapes the parser, whatever it is given."""
    with contextlib.suppress(ExpectationError):
        parse(text)


@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6))
def test_comparisons_agree_with_python(a: int, b: int) -> None:
    report = {"devices": {"failed": a}}
    for op, expected in (("<", a < b), ("<=", a <= b), (">", a > b), (">=", a >= b),
                         ("==", a == b), ("!=", a != b)):  # fmt: skip
        (result,) = check([Expectation(name="c", expr=f"devices.failed {op} {b}")], report)
        assert result["passed"] is expected
