"""successCondition: the tiny expression language, valid and malformed input."""

from __future__ import annotations

import math

import pytest

from filterrelease.core.condition import (
    MAX_DEPTH,
    ConditionError,
    evaluate_condition,
    validate_condition,
)

NAN, INF = math.nan, math.inf

TRUTH = [
    ("result < 0.01", 0.005, True),
    ("result < 0.01", 0.01, False),
    ("result >= 99 && result <= 100", 99.0, True),
    ("result >= 99 && result <= 100", 100.5, False),
    ("result >= 99 and result <= 100", 99.5, True),
    ("result == 0", 0.0, True),
    ("result == 0", -0.0, True),
    ("result != 0", 3.0, True),
    ("result > 5 || result < 1", 0.5, True),
    ("result > 5 or result < 1", 3.0, False),
    ("!(result > 5)", 3.0, True),
    ("not result > 5", 6.0, False),
    ("result[0] < 1", 0.5, True),  # Argo's spelling
    ("result * 100 < 5", 0.04, True),
    ("100 - result <= 1", 99.5, True),
    ("-result > 2", -3.0, True),
    ("2 + 3 * result == 11", 3.0, True),  # * binds tighter than +
    ("(2 + 3) * result == 15", 3.0, True),
    ("result / 0 > 1e300", 1.0, True),  # IEEE: +Inf, no exception
    ("isNaN(result / result)", 0.0, True),
    ("result < 1", NAN, False),  # every comparison with NaN is false
    ("result >= 1", NAN, False),
    ("isNaN(result) || result < 1", NAN, True),
    ("isInf(result)", INF, True),
    ("true && result > 1", 2.0, True),
    ("false || result > 1", 0.0, False),
    ("1.5e2 == result", 150.0, True),
    (".5 == result", 0.5, True),
    ("  result   <   1  ", 0.0, True),
]


@pytest.mark.parametrize(("text", "result", "expected"), TRUTH)
def test_conditions(text: str, result: float, expected: bool) -> None:
    assert validate_condition(text) is None
    assert evaluate_condition(text, result) is expected


MALFORMED = [
    ("", "the condition is empty"),
    ("   ", "the condition is empty"),
    ("result", "must compare"),
    ("result + 1", "must compare"),
    ("result <", "unexpected end of the condition"),
    ("< 1", "unexpected '<' at column 1"),
    ("result < 1 < 2", "chained comparison"),
    ("result << 1", "unexpected '<'"),
    ("result = 1", "unexpected '='"),
    ("result < 0.01;", "unexpected ';' at column 14"),
    ("result && result < 1", "'&&' needs true/false operands"),
    ("result < 1 || 2", "'||' needs true/false operands"),
    ("!result", "'!' needs true/false operands"),
    ("(result > 1) < 2", "compares numbers, not true/false"),
    ("(result > 1) + 1 > 0", "works on numbers"),
    ("-(result > 1)", "'-' works on numbers"),
    ("res < 1", "unknown name 'res' at column 1"),
    ("len(result) > 0", "unknown name 'len'"),
    ("__import__('os')", 'unexpected "\'" at column 12'),
    ("__import__ < 1", "unknown name '__import__'"),
    ("result.real < 1", "unexpected '.' at column 7"),
    ("result[1] < 0", "only result[0] exists"),
    ("result[0 < 1", "expected ']'"),
    ("(result < 1", "unexpected end"),
    ("result < 1)", "unexpected ')'"),
    ("isNaN result", "expected '('"),
    ("isNaN(result > 1)", "isNaN() takes a number"),
    ("result < 1.2.3", "unexpected '.3'"),
    ("result < 'a'", 'unexpected "\'"'),
    ("result < 1 # comment", "unexpected '#'"),
    ("(" * (MAX_DEPTH + 1) + "result < 1" + ")" * (MAX_DEPTH + 1), "nests deeper"),
    ("-" * 5000 + "result < 1", "longer than 1024"),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED)
def test_malformed_conditions_are_reported(text: str, message: str) -> None:
    problem = validate_condition(text)
    assert problem is not None
    assert message in problem
    assert problem.startswith("successCondition ")
    with pytest.raises(ConditionError):
        evaluate_condition(text, 1.0)


def test_nesting_up_to_the_limit_is_fine() -> None:
    depth = MAX_DEPTH - 1
    assert validate_condition("(" * depth + "result < 1" + ")" * depth) is None
