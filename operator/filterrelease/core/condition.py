"""successCondition: a tiny, safe expression language over one number, `result`.

    result < 0.01
    result >= 99 && result <= 100
    result[0] == 0 || isNaN(result)

The user writes these in a spec, so they are never handed to eval(): a recursive-descent parser
turns the text into a small typed tree, checked before any measurement runs (a condition that
cannot be parsed is a spec error, reported through `validate_condition`). The syntax is the
subset of Argo Rollouts' (expr-lang) and Flagger's conditions that makes sense for one number:

    or:   a || b, a or b          and:  a && b, a and b          not:  !a, not a
    compare: < <= > >= == !=      arithmetic: + - * / and unary -, parentheses
    result, result[0] (Argo's spelling for the first element), numbers (1, 0.5, 1e-3),
    true, false, isNaN(x), isInf(x)

Arithmetic follows IEEE 754 (x/0 is ±Inf or NaN, every comparison with NaN is false), so a
condition never fails at evaluation time once it has parsed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_LENGTH = 1024
MAX_DEPTH = 32  # nesting; keeps a hostile condition from exhausting the interpreter's stack

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|==|!=|&&|\|\||[<>!+\-*/()\[\]])"
    r")"
)
_KEYWORDS = {"and": "&&", "or": "||", "not": "!"}
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class ConditionError(ValueError):
    """The condition is not valid; the message says where and why."""


# A compiled expression: a function of `result`, and whether it yields a bool or a number.
@dataclass(frozen=True)
class _Node:
    boolean: bool
    run: Callable[[float], float | bool]


def _divide(a: float, b: float) -> float:
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _divide,
}


def _either(a: _Node, b: _Node) -> _Node:
    return _Node(True, lambda r: bool(a.run(r)) or bool(b.run(r)))


def _both(a: _Node, b: _Node) -> _Node:
    return _Node(True, lambda r: bool(a.run(r)) and bool(b.run(r)))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, column)
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise ConditionError(f"unexpected {text[pos:].strip()[:1]!r} at column {pos + 1}")
            kind = m.lastgroup or ""
            value = m.group(kind)
            if kind == "name" and value in _KEYWORDS:
                kind, value = "op", _KEYWORDS[value]
            self.tokens.append((kind, value, m.start(kind) + 1))
            pos = m.end()
        self.i = 0
        self.depth = 0

    # -- token helpers ---------------------------------------------------------------------

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        if self.i >= len(self.tokens):
            raise ConditionError("unexpected end of the condition")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect(self, value: str) -> None:
        kind, text, col = self.take()
        if text != value or kind != "op":
            raise ConditionError(f"expected {value!r} at column {col}, found {text!r}")

    def where(self) -> str:
        if self.i < len(self.tokens):
            return f"at column {self.tokens[self.i][2]}"
        return "at the end"

    # -- grammar ---------------------------------------------------------------------------

    def parse(self) -> _Node:
        if not self.tokens:
            raise ConditionError("the condition is empty")
        node = self.disjunction()
        if self.i < len(self.tokens):
            _, text, col = self.tokens[self.i]
            raise ConditionError(f"unexpected {text!r} at column {col}")
        if not node.boolean:
            raise ConditionError("the condition must compare, e.g. 'result < 0.01'")
        return node

    def _boolean(self, node: _Node, op: str) -> _Node:
        if not node.boolean:
            raise ConditionError(f"{op!r} needs true/false operands (comparisons) {self.where()}")
        return node

    def disjunction(self) -> _Node:
        left = self.conjunction()
        while self.peek() == "||":
            self.take()
            left = _either(self._boolean(left, "||"), self._boolean(self.conjunction(), "||"))
        return left

    def conjunction(self) -> _Node:
        left = self.negation()
        while self.peek() == "&&":
            self.take()
            left = _both(self._boolean(left, "&&"), self._boolean(self.negation(), "&&"))
        return left

    def negation(self) -> _Node:
        if self.peek() == "!":
            self.take()
            inner = self._nested(self.negation)
            self._boolean(inner, "!")
            return _Node(True, lambda r: not inner.run(r))
        return self.comparison()

    def comparison(self) -> _Node:
        left = self.sum()
        op = self.peek()
        if op in _COMPARE:
            self.take()
            right = self.sum()
            if left.boolean or right.boolean:
                raise ConditionError(f"{op!r} compares numbers, not true/false {self.where()}")
            compare = _COMPARE[op]
            a, b = left, right
            left = _Node(True, lambda r: compare(float(a.run(r)), float(b.run(r))))
            if self.peek() in _COMPARE:
                raise ConditionError(f"chained comparison {self.where()}: use &&")
        return left

    def sum(self) -> _Node:
        left = self.product()
        while self.peek() in ("+", "-"):
            left = self._arith(left, self.take()[1], self.product())
        return left

    def product(self) -> _Node:
        left = self.unary()
        while self.peek() in ("*", "/"):
            left = self._arith(left, self.take()[1], self.unary())
        return left

    def _arith(self, a: _Node, op: str, b: _Node) -> _Node:
        if a.boolean or b.boolean:
            raise ConditionError(f"{op!r} works on numbers, not true/false {self.where()}")
        fn = _ARITH[op]
        return _Node(False, lambda r: fn(float(a.run(r)), float(b.run(r))))

    def unary(self) -> _Node:
        if self.peek() == "-":
            self.take()
            inner = self._nested(self.unary)
            if inner.boolean:
                raise ConditionError(f"'-' works on numbers {self.where()}")
            return _Node(False, lambda r: -float(inner.run(r)))
        return self.atom()

    def _nested(self, rule: Callable[[], _Node]) -> _Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionError(f"the condition nests deeper than {MAX_DEPTH} levels")
        try:
            return rule()
        finally:
            self.depth -= 1

    def atom(self) -> _Node:
        kind, text, col = self.take()
        if kind == "number":
            number = float(text)
            return _Node(False, lambda r: number)
        if text == "(":
            inner = self._nested(self.disjunction)
            self.expect(")")
            return inner
        if kind != "name":
            raise ConditionError(f"unexpected {text!r} at column {col}")
        if text == "result":
            if self.peek() == "[":
                self.take()
                kind, index, icol = self.take()
                if index != "0":
                    raise ConditionError(
                        f"only result[0] exists (the query returns one value), column {icol}"
                    )
                self.expect("]")
            return _Node(False, lambda r: r)
        if text in ("true", "false"):
            value = text == "true"
            return _Node(True, lambda r: value)
        if text in ("isNaN", "isInf"):
            self.expect("(")
            arg = self._nested(self.disjunction)
            self.expect(")")
            if arg.boolean:
                raise ConditionError(f"{text}() takes a number, column {col}")
            test = math.isnan if text == "isNaN" else math.isinf
            return _Node(True, lambda r: test(float(arg.run(r))))
        raise ConditionError(
            f"unknown name {text!r} at column {col}: use result, numbers, isNaN() or isInf()"
        )


def compile_condition(text: str) -> Callable[[float], bool]:
    """The condition as a function of `result`; ConditionError if it is not valid."""
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"the condition is longer than {MAX_LENGTH} characters")
    node = _Parser(text).parse()
    return lambda result: bool(node.run(result))


def validate_condition(text: str) -> str | None:
    """Why `text` is not a valid successCondition, or None when it is."""
    try:
        compile_condition(text)
    except ConditionError as err:
        return f"successCondition {text!r}: {err}"
    return None


def evaluate_condition(text: str, result: float) -> bool:
    """Whether `result` satisfies the condition; ConditionError if the condition is invalid."""
    return compile_condition(text)(result)
