"""The one table of op rules: every family module's records, keyed by ONNX op type.

An op type that is not here is unknown to every stage: shapes count it in ``unknown_ops``
and pass its input's field on, the channel stage freezes the groups it reads (with the
reason), costs count nothing for it, reconstruction treats it as mixing channels.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from onnxmbs.ops import (activation, concat_split, conv, elementwise, gemm, normalization, pooling, recurrent, reduce,
                         resize, shape)
from onnxmbs.ops.rules import STAGES, Declined, OpRules, Params

FAMILIES = (conv, gemm, recurrent, pooling, reduce, resize, normalization, activation, elementwise, concat_split,
            shape)


def _table() -> tuple[dict[str, OpRules], dict[str, str]]:
    table: dict[str, OpRules] = {}
    family: dict[str, str] = {}
    for module in FAMILIES:
        name = module.__name__.rsplit(".", 1)[-1]
        for rules in module.RULES:
            if rules.op in table:
                raise ValueError(f"op {rules.op} registered twice: in ops/{family[rules.op]}.py and ops/{name}.py")
            table[rules.op], family[rules.op] = rules, name
    return table, family


_OPS, _FAMILY = _table()
OPS: Mapping[str, OpRules] = MappingProxyType(_OPS)
FAMILY: Mapping[str, str] = MappingProxyType(_FAMILY)  # op type -> module of onnxmbs.ops that registers it


def lookup(op: str) -> OpRules | None:
    """The rules of ``op``, or None for an op no stage knows."""
    return _OPS.get(op)


def kind(op: str, stage: str) -> str | None:
    """The kind of rule ``stage`` applies to ``op``; None when the stage declines it or the op is unknown."""
    rules = _OPS.get(op)
    value = getattr(rules, stage) if rules is not None else None
    return value if isinstance(value, str) else None


def param_inputs(op: str) -> Params | None:
    """Which inputs of ``op`` hold parameters; None when it has none (or is unknown)."""
    rules = _OPS.get(op)
    return rules.params if rules is not None and isinstance(rules.params, Params) else None


def ops_with(stage: str, *kinds: str) -> frozenset[str]:
    """The op types whose ``stage`` kind is one of ``kinds`` (all that the stage handles when none given)."""
    return frozenset(op for op, rules in _OPS.items() if isinstance(getattr(rules, stage), str)
                     and (not kinds or getattr(rules, stage) in kinds))


__all__ = ["FAMILY", "OPS", "STAGES", "Declined", "OpRules", "Params", "kind", "lookup", "ops_with", "param_inputs"]
