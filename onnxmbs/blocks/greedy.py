"""Greedy block pruning: score every removable block, remove the best, repeat until a stop rule.

Each round scores the current model's removable blocks (:func:`~onnxmbs.blocks.scoring.score_blocks`)
and removes the one whose removal keeps the highest top-1 accuracy (ties: the block with more
MACs, then the earlier one). ``rescore="once"`` ranks the blocks of the original model once and
removes them in that order. After each removal the model's accuracy is measured with a plain
run of the new model. Stop rules, any combination (the first one met stops):

* ``remove=N``: N blocks removed;
* ``max_accuracy_drop=A``: a removal that would leave accuracy below ``baseline - A`` is not made;
* ``target_param_reduction=R`` / ``target_flop_reduction=R``: parameters / MACs down by at least R;
* no removable block left.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxmbs.blocks.discover import Block, find_blocks
from onnxmbs.blocks.document import BlockRecord, BlocksPlan, RoundRecord, Summary
from onnxmbs.blocks.remove import remove_blocks
from onnxmbs.blocks.scoring import score_blocks
from onnxmbs.errors import MBSError
from onnxmbs.graph.costs import count_costs
from onnxmbs.graph.load import LoadedModel, load_model
from onnxmbs.stats.accuracy import num_classes, open_predictor, predictions, runnable
from onnxmbs.stats.counting import choose_provider
from onnxmbs.stats.labelled import LabelledData, open_labelled

logger = logging.getLogger(__name__)

RESCORE = ("every", "once")


@dataclass(frozen=True)
class Stop:
    """When to stop removing blocks (at least one rule)."""

    remove: int | None = None
    max_accuracy_drop: float | None = None
    target_param_reduction: float | None = None
    target_flop_reduction: float | None = None

    def __post_init__(self) -> None:
        if all(v is None for v in (self.remove, self.max_accuracy_drop, self.target_param_reduction,
                                   self.target_flop_reduction)):
            raise MBSError("no stop rule — give --remove N, --max-accuracy-drop A, --target-param-reduction R "
                           "or --target-flop-reduction R")
        for name in ("max_accuracy_drop", "target_param_reduction", "target_flop_reduction"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise MBSError(f"{name} must be a fraction in [0, 1], got {value} — e.g. 0.01 for one point")
        if self.remove is not None and self.remove < 1:
            raise MBSError(f"remove must be at least 1, got {self.remove}")

    def reached(self, removed: int, params: tuple[int, int], macs: tuple[int, int]) -> bool:
        """Whether a count or size target is met (``params``/``macs``: (original, now))."""
        if self.remove is not None and removed >= self.remove:
            return True
        if self.target_param_reduction is not None and 1 - params[1] / params[0] >= self.target_param_reduction:
            return True
        return self.target_flop_reduction is not None and 1 - macs[1] / macs[0] >= self.target_flop_reduction

    def to_json(self) -> dict[str, float | int | None]:
        return {"remove": self.remove, "max_accuracy_drop": self.max_accuracy_drop,
                "target_param_reduction": self.target_param_reduction,
                "target_flop_reduction": self.target_flop_reduction}


@dataclass(frozen=True)
class BlocksResult:
    """The plan and the shallow model (the original proto minus the removed blocks)."""

    plan: BlocksPlan
    model: onnx.ModelProto = field(repr=False)
    seconds_per_round: tuple[float, ...] = ()  # wall time of each round
    cpu_seconds_per_round: tuple[float, ...] = ()  # this process's CPU time of each round


@dataclass
class _State:
    """The model as it loses blocks (mutable inside :func:`prune_blocks` only)."""

    loaded: LoadedModel
    removed: list[Block] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    times: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) seconds per round


def _costs(loaded: LoadedModel) -> tuple[int, int]:
    costs = count_costs(loaded.graph, loaded.shapes, loaded.constants, batch=loaded.input.shape[0])
    return costs.params, costs.flops


def _top1(model: onnx.ModelProto, loaded: LoadedModel, data: LabelledData, *, batch_size: int, provider: str) -> float:
    scores = predictions(open_predictor(loaded, provider=provider, model=model), data, batch_size=batch_size)
    return float((scores.argmax(axis=1) == data.y).mean())


def _best(scores: Mapping[str, float], blocks: Mapping[str, Block], order: list[str]) -> str:
    return max((b for b in order if b in scores),
               key=lambda b: (scores[b], blocks[b].macs, -order.index(b)))


def prune_blocks(source: str | Path | onnx.ModelProto | LoadedModel, data: LabelledData | object, *, stop: Stop,
                 rescore: str = "every", batch_size: int = 64, provider: str = "cpu", threads: int | None = None,
                 progress: bool | None = None, input_shape: tuple[int, ...] | None = None,
                 settings: Mapping[str, object] | None = None) -> BlocksResult:
    """Remove residual blocks from ``source`` greedily by measured accuracy on ``data``.

    ``data``: :class:`LabelledData`, or anything :func:`open_labelled` reads (a ``.npz`` path, a folder
    of class folders, ``(x, y)`` arrays or batches; images already preprocessed when float).
    """
    if rescore not in RESCORE:
        raise MBSError(f"rescore must be one of {RESCORE}, got {rescore!r}")
    loaded = source if isinstance(source, LoadedModel) else load_model(source, input_shape=input_shape)
    data = open_labelled(data, shape=loaded.input.shape, layout=loaded.input.layout)
    data.check_classes(num_classes(loaded))
    provider = choose_provider(provider)
    fixed = None if loaded.batch_dynamic else loaded.input.shape[0]
    blocks = find_blocks(loaded)
    ids = {b.join: b.id for b in blocks}
    params, macs = _costs(loaded)
    state = _State(loaded)
    baseline, ranking = None, []
    while not stop.reached(len(state.removed), (params, _costs(state.loaded)[0]), (macs, _costs(state.loaded)[1])):
        start, cpu = time.perf_counter(), time.process_time()
        current = find_blocks(state.loaded, ids=ids)
        candidates = {b.id: b for b in current if b.removable}
        if not candidates:
            logger.info("no removable block left after %d removals", len(state.removed))
            break
        round_no = len(state.removed) + 1
        scores: Mapping[str, float] = {}
        if rescore == "every" or baseline is None:
            measured = score_blocks(runnable(state.loaded), loaded.input.name, list(candidates.values()), data,
                                    batch_size=batch_size, fixed_batch=fixed, provider=provider, threads=threads,
                                    progress=progress, desc=f"round {round_no}")
            baseline = measured.accuracy if baseline is None else baseline
            scores = measured.scores
            order = [b.id for b in current if b.id in scores]
            ranking = sorted(scores, key=lambda b: (-scores[b], -candidates[b].macs, order.index(b)))
        pick = next((b for b in ranking if b in candidates), None)
        if pick is None:
            break
        if not _remove(state, candidates[pick], scores, round_no, baseline, stop, data, batch_size, provider):
            break
        state.times.append((time.perf_counter() - start, time.process_time() - cpu))
    return _result(loaded, source, blocks, state, baseline, data, batch_size, provider, rescore, stop, settings)


def _remove(state: _State, block: Block, scores: Mapping[str, float], round_no: int, baseline: float, stop: Stop,
            data: LabelledData, batch_size: int, provider: str) -> bool:
    """Remove ``block`` from the current model unless that breaks the accuracy budget."""
    model = remove_blocks(runnable(state.loaded), [block], check=False)
    loaded = load_model(model, input_shape=state.loaded.input.shape)
    accuracy = _top1(runnable(loaded), loaded, data, batch_size=batch_size, provider=provider)
    if stop.max_accuracy_drop is not None and baseline - accuracy > stop.max_accuracy_drop + 1e-12:
        logger.info("removing %s would drop accuracy to %.4f (baseline %.4f): stopping", block.id, accuracy, baseline)
        return False
    state.loaded = loaded
    state.removed.append(block)
    state.rounds.append(RoundRecord(round_no, dict(scores), block.id, accuracy))
    return True


def _original_proto(source: str | Path | onnx.ModelProto | LoadedModel, loaded: LoadedModel) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, LoadedModel) or not Path(str(source)).is_file():
        return runnable(loaded)
    return onnx.load(str(source))


def _result(loaded: LoadedModel, source, blocks: list[Block], state: _State, baseline: float | None,
            data: LabelledData, batch_size: int, provider: str, rescore: str, stop: Stop,
            settings: Mapping[str, object] | None) -> BlocksResult:
    shallow = _original_proto(source, loaded)
    for block in state.removed:
        shallow = remove_blocks(shallow, [block], check=False)
    shallow = remove_blocks(shallow, [], check=True)
    after = load_model(shallow, input_shape=loaded.input.shape)
    if baseline is None:
        baseline = _top1(runnable(loaded), loaded, data, batch_size=batch_size, provider=provider)
    accuracy_after = state.rounds[-1].accuracy if state.rounds else baseline
    params, macs = _costs(loaded)
    params_after, macs_after = _costs(after)
    doc_settings = {"rescore": rescore, **stop.to_json(), "images": len(data), "data": data.source,
                    "provider": provider, **(settings or {})}
    plan = BlocksPlan.create(model=loaded.record(), baseline_accuracy=baseline,
                             blocks=tuple(BlockRecord.of(b) for b in blocks), rounds=tuple(state.rounds),
                             summary=Summary(params, params_after, macs, macs_after, accuracy_after),
                             settings=doc_settings)
    return BlocksResult(plan, shallow, tuple(w for w, _ in state.times), tuple(c for _, c in state.times))
