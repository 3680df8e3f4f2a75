"""Explicit Runge-Kutta methods as Butcher tableaus.

A method is data, not code: the solver reads ``a`` (strictly lower triangular stage
coefficients), ``b`` (weights) and ``c`` (nodes). Adding a method is adding a tableau
with :func:`register_method`.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ButcherTableau", "METHODS", "get_method", "register_method"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta scheme of ``len(b)`` stages and classical order ``order``.

    ``a[i]`` holds the ``i`` coefficients of stage ``i`` on the previous stages (so
    ``a[0] == ()``), ``b`` the weights of the increment and ``c`` the stage nodes.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        stages = len(self.b)
        if stages == 0 or len(self.a) != stages or len(self.c) != stages:
            raise ValueError(f"tableau {self.name!r}: a, b and c must describe the same number of stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(
                    f"tableau {self.name!r}: row {i} of a must have {i} entries (explicit methods only)"
                )
            # Consistency c_i = sum_j a_ij: every method here satisfies it, and the
            # time gradient relies on stage times being t + c_i h.
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"tableau {self.name!r}: c[{i}] must equal the sum of a[{i}]")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError(f"tableau {self.name!r}: the weights b must sum to 1")

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def last_use(self) -> tuple[int, ...]:
        """For each stage j, the last stage i whose input needs k_j (j itself if none)."""
        return tuple(
            max([j] + [i for i in range(j + 1, self.stages) if self.a[i][j] != 0.0]) for j in range(self.stages)
        )


def _tableau(name: str, a, b, c, order: int) -> ButcherTableau:
    # Written with exact fractions so that the float coefficients are correctly rounded.
    as_float = lambda xs: tuple(float(Fraction(x)) for x in xs)  # noqa: E731
    return ButcherTableau(name, tuple(as_float(row) for row in a), as_float(b), as_float(c), order)


METHODS: dict[str, ButcherTableau] = {}


def register_method(tableau: ButcherTableau) -> ButcherTableau:
    """Make ``tableau`` available to :func:`mpnode.odeint` as ``method=tableau.name``."""
    if not isinstance(tableau, ButcherTableau):
        raise TypeError(f"register_method expects a ButcherTableau, got {type(tableau).__name__}")
    METHODS[tableau.name] = tableau
    return tableau


for _t in (
    _tableau("euler", [[]], ["1"], ["0"], 1),
    _tableau("midpoint", [[], ["1/2"]], ["0", "1"], ["0", "1/2"], 2),
    _tableau("heun", [[], ["1"]], ["1/2", "1/2"], ["0", "1"], 2),
    _tableau("ralston", [[], ["2/3"]], ["1/4", "3/4"], ["0", "2/3"], 2),
    _tableau(
        "rk4",
        [[], ["1/2"], ["0", "1/2"], ["0", "0", "1"]],
        ["1/6", "1/3", "1/3", "1/6"],
        ["0", "1/2", "1/2", "1"],
        4,
    ),
    # Kutta's 3/8 rule: what torchdiffeq's fixed-grid "rk4" computes.
    _tableau(
        "rk38",
        [[], ["1/3"], ["-1/3", "1"], ["1", "-1", "1"]],
        ["1/8", "3/8", "3/8", "1/8"],
        ["0", "1/3", "2/3", "1"],
        4,
    ),
):
    register_method(_t)


def get_method(method: str | ButcherTableau) -> ButcherTableau:
    """Resolve a method name (or pass a tableau through), with an error that lists the known ones."""
    if isinstance(method, ButcherTableau):
        return method
    if not isinstance(method, str) or method not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise ValueError(
            f"method={method!r} is not a known explicit Runge-Kutta method; choose one of: {known} "
            "(or pass a ButcherTableau / register one with mpnode.register_method)"
        )
    return METHODS[method]
