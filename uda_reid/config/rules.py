"""How a setting declares its rule, once, next to its field: ``lr: float = setting(3.5e-4, limit=POSITIVE)``.

The type is the field's annotation; :class:`Rule` holds the range (:class:`Limit`), the allowed words
(a tuple, or :class:`names_in` a registry), extra words a number takes, any other check, or the class
declaring a mapping's keys. :class:`Relation` is a rule between keys of one section. Checking values
against these declarations is :mod:`uda_reid.config.checking`'s job.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

@dataclass(frozen=True)
class Limit:
    """The values a number may take: ``low``/``high`` bounds (None: unbounded), open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        if self.low is None:
            return f"< {self.high:g}" if self.high_open else f"<= {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = Limit(0, low_open=True), Limit(0), Limit(1)
PROBABILITY, FRACTION = Limit(0, 1), Limit(0, 1, high_open=True)  # FRACTION: a momentum, a smoothing
UNIT_INTERVAL_OPEN = Limit(0, 1, low_open=True, high_open=True)  # a Jaccard eps, a share
UP_TO_ONE = Limit(0, 1, low_open=True)  # (0, 1]: a factor, a share of an area


@dataclass(frozen=True)
class Rule:
    """What a setting may be besides its type (the field's annotation), declared once next to it.

    ``limit``: the range of a number (of each item of a list). ``choices``: the words a string may be
    (each item of a list): a tuple, or a function returning them, for names kept in a registry and
    looked up only when a value is checked (:func:`names_in`). ``words``: words a number setting
    also takes (``clustering.eps: auto``). ``check``: any other test of the whole value, with
    ``expects`` saying what it wants (a string, or a function returning one). ``options``: a mapping
    whose keys are the fields of a dataclass (``adapt.source_optim``: ``optim`` keys), or the name
    of how they are found: ``"method"`` (the ``Options`` of ``adapt.method``), ``"dataset"`` (each
    registered dataset's options). A setting whose only rule is its type (a boolean, a free path)
    declares ``Rule()`` all the same, so a key without a declaration stands out (:func:`undeclared_keys`).
    """

    limit: Limit | None = None
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    words: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    expects: str | Callable[[], str] = ""
    options: type | str | None = None
    help: str = ""

    def allowed(self) -> tuple[str, ...] | None:
        """The words the setting may be (looked up now for a registry), or None without a list."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def problem(self, value: Any) -> tuple[str, Any] | None:
        """(what the value must be, the part of it that is not), or None when ``value`` obeys the rule."""
        if value is None:
            return None
        if self.words and isinstance(value, str):
            if value in self.words:
                return None
            return f"{self.limit} or {_quoted_choices(self.words)}", value
        items = value if isinstance(value, list) else [value]
        if self.limit is not None:
            bad = next((v for v in items if _is_number(v) and not self.limit.admits(v)), None)
            if bad is not None:
                return str(self.limit), bad
        allowed = self.allowed()
        if allowed is not None:
            bad = next((v for v in items if v not in allowed), _NOTHING)
            if bad is not _NOTHING:
                return _quoted_choices(allowed), bad
        if self.check is not None and not self.check(value):
            return (self.expects() if callable(self.expects) else self.expects) or "valid", value
        return None


_NOTHING = object()

#: Where :func:`setting` keeps a field's :class:`Rule` (``dataclasses.field(metadata=...)``).
RULE_KEY = "uda_reid.config.rule"
#: Marks the field of RunConfig that holds the add-on sections.
_ADD_ON_SECTIONS = "uda_reid.config.add_on_sections"


def setting(default: Any = dataclasses.MISSING, *, limit: Limit | None = None,
            choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None, words: tuple[str, ...] = (),
            check: Callable[[Any], bool] | None = None, expects: str | Callable[[], str] = "",
            options: type | str | None = None, help: str = "") -> Any:
    """A dataclass field that declares its rule (see :class:`Rule`) next to its type and default.

    ``count: int = setting(4, limit=AT_LEAST_ONE, help="...")``; a list or dict default is copied
    for every instance. The rule is checked wherever the value is set (recipe, ``extends``,
    ``--set``, a flag, ``method_options``, dataset options) and by :func:`check_config`.
    """
    rule = Rule(limit=limit, choices=choices, words=tuple(words), check=check, expects=expects, options=options,
                help=help)
    metadata = {RULE_KEY: rule}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def rule_of(field_: dataclasses.Field) -> Rule | None:
    """The rule a dataclass field declares, or None for a field declared without one."""
    return field_.metadata.get(RULE_KEY)


class names_in:  # noqa: N801 (used like a function in declarations)
    """The names in a registry, looked up when a value is checked: ``names_in("uda_reid.methods:METHODS")``.

    The registries import this module, so a declaration names them by import path instead of
    importing them. The object may be a ``Registry``, a mapping (its keys) or a function returning
    names; ``extra`` words come first (``"auto"``).
    """

    def __init__(self, target: str, *extra: str) -> None:
        self.target = target
        self.extra = extra

    def __call__(self) -> tuple[str, ...]:
        module, _, attribute = self.target.partition(":")
        names = getattr(importlib.import_module(module), attribute)
        if callable(names) and not hasattr(names, "names"):
            names = names()
        elif hasattr(names, "names"):
            names = names.names()
        return (*self.extra, *names)

    def __repr__(self) -> str:
        return f"names_in({self.target!r}{''.join(f', {e!r}' for e in self.extra)})"


@dataclass(frozen=True)
class Relation:
    """A rule between keys of one section that the config alone decides, declared on the section
    class as ``relations: ClassVar[tuple[Relation, ...]]`` (keys relative to the section).

    ``holds(value of key, *values of others)`` says whether it holds (not asked when a value is
    None); ``expects`` is what ``key`` must be, formatted with ``keys`` (the others' dotted names)
    and ``values`` (theirs): ``"<= {keys[0]} ({values[0]})"``.
    """

    key: str
    others: tuple[str, ...]
    holds: Callable[..., bool]
    expects: str


def at_most(key: str, bound: str) -> Relation:
    """``key`` <= ``bound``, two keys of the same section."""
    return Relation(key, (bound,), operator.le, "<= {keys[0]} ({values[0]})")


def _quoted_choices(choices: tuple[str, ...]) -> str:
    if len(choices) == 1:
        return repr(choices[0])
    if len(choices) == 2:
        return f"{choices[0]!r} or {choices[1]!r}"
    return f"one of {', '.join(choices)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ascending_pair(value: list[float]) -> bool:
    return len(value) == 2 and value[0] <= value[1]


ASCENDING_PAIR = "[low, high] with low <= high"


def _is_device(value: str) -> bool:
    if value == "auto":
        return True
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        return False
    return True


def _is_transformer(arch: str) -> bool:
    return bool(_lookup("models.backbones:is_transformer")(arch))


def _lookup(target: str) -> Any:
    """``"module:attribute"`` of the package, imported when a value is checked: the registries (datasets,
    methods, add-ons) sit in layers above this module and import it, so it names them by path."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(f"uda_reid.{module}"), attribute)


def _dataset_specs_ok(value: str | list[str]) -> bool:
    DATASETS, split_spec = _lookup("data.datasets:DATASETS"), _lookup("data.datasets:split_spec")

    return all(split_spec(spec)[0] in DATASETS for spec in (value if isinstance(value, list) else [value]))


def _dataset_expected(plural: bool) -> Callable[[], str]:
    def expected() -> str:
        DATASETS = _lookup("data.datasets:DATASETS")
        what = "registered datasets" if plural else "a registered dataset"
        return f"{what} ({', '.join(DATASETS.names())}; folder:DIR for a folder of images)"

    return expected


#: The rule of a dataset given by name (``market1501``, an alias, ``folder:DIR``), and of a list of them.
DATASET_SPEC = {"check": _dataset_specs_ok, "expects": _dataset_expected(plural=False)}
DATASET_SPECS = {"check": _dataset_specs_ok, "expects": _dataset_expected(plural=True)}
