"""Greedy block pruning: score every removable block, remove the best, repeat until a stop rule.

Each round scores the current model's removable blocks (:func:`~onnxmbs.blocks.scoring.score_blocks`)
and removes the one whose removal keeps the highest score (ties: the block with more MACs, then the
earlier one). The score (:mod:`onnxmbs.blocks.quality`) is top-1 accuracy on labelled data, the
fidelity to the original model's outputs on unlabelled data, or the user's metric. ``rescore="once"`` ranks the blocks of the original model once and
removes them in that order. The accuracy after each removal is measured on the new model itself:
by the next round's prefix pass (which runs the whole current model), by a final plain run after
the last round, and with ``rescore="once"`` by a plain run each round. Stop rules, any
combination (the first one met stops):

* ``remove=N``: N blocks removed;
* ``max_accuracy_drop=A``: a removal that would leave accuracy below ``baseline - A`` is not made;
* ``target_param_reduction=R`` / ``target_flop_reduction=R``: parameters / MACs down by at least R;
* no removable block left.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxmbs.blocks.discover import Block, find_blocks
from onnxmbs.blocks.document import BlockRecord, BlocksPlan, BlocksSettings, RoundRecord, Summary
from onnxmbs.blocks.remove import remove_blocks
from onnxmbs.blocks.quality import FIDELITY, TOP1, Quality, fidelity_to, top1, user_metric
from onnxmbs.blocks.scoring import RoundScores, score_blocks
from onnxmbs.compact.reconstruct import ReconstructOptions
from onnxmbs.errors import MBSError
from onnxmbs.graph.costs import count_costs
from onnxmbs.graph.load import LoadedModel, load_model
from onnxmbs.stats.accuracy import num_classes, runnable
from onnxmbs.runtime.session import choose_provider
from onnxmbs.data.labelled import LabelledData, has_labels, open_images, open_labelled
from onnxmbs.data.normalisation import resolve_normalisation

logger = logging.getLogger(__name__)

RESCORE = ("every", "once", "refit")  # refit: re-fit after each removal (reconstruct), score on the re-fitted model


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


@dataclass(frozen=True)
class _Run:
    """What stays the same for every round of one :func:`prune_blocks` call."""

    loaded: LoadedModel  # the original model
    source: object  # what the user gave (path, proto or LoadedModel): the shallow model is cut from it
    data: LabelledData
    quality: Quality
    stop: Stop
    rescore: str
    ids: Mapping[str, str]  # join name -> block id on the original model
    batch_size: int
    provider: str
    threads: int | None
    progress: bool | None
    reconstruct: ReconstructOptions | None = None

    def top1(self, loaded: LoadedModel) -> float:
        """The score of a model with a plain run (what the written model scores)."""
        return self.score(loaded, [], 0).accuracy

    def score(self, loaded: LoadedModel, candidates: list[Block], round_no: int) -> RoundScores:
        fixed = None if loaded.batch_dynamic else loaded.input.shape[0]
        return score_blocks(runnable(loaded), loaded.input.name, candidates, self.data, quality=self.quality,
                            batch_size=self.batch_size, fixed_batch=fixed, provider=self.provider,
                            threads=self.threads, progress=self.progress if candidates else False,
                            desc=f"round {round_no}")


@dataclass
class _State:
    """The model as it loses blocks (mutable inside :func:`prune_blocks` only)."""

    loaded: LoadedModel
    removed: list[Block] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    times: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) seconds per round
    baseline: float | None = None
    ranking: list[str] = field(default_factory=list)
    confirmed: bool = True  # the last round's accuracy comes from a plain run of the model after it

    def confirm(self, accuracy: float) -> None:
        """The accuracy of the current model, measured by a plain run: the last round's accuracy."""
        if self.rounds and not self.confirmed:
            self.rounds[-1] = dataclasses.replace(self.rounds[-1], accuracy=accuracy)
        self.confirmed = True


def _costs(loaded: LoadedModel) -> tuple[int, int]:
    costs = count_costs(loaded.graph, loaded.shapes, loaded.constants, batch=loaded.input.shape[0])
    return costs.params, costs.flops


def prune_blocks(source: str | Path | onnx.ModelProto | LoadedModel, data: LabelledData | object, *, stop: Stop,
                 metric: str | Quality | None = None, rescore: str = "every", batch_size: int = 64, provider: str = "cpu",
                 threads: int | None = None, progress: bool | None = None,
                 input_shape: tuple[int, ...] | None = None, settings: Mapping[str, object] | None = None,
                 reconstruct: ReconstructOptions | None = None) -> BlocksResult:
    """Remove residual blocks from ``source`` greedily by the score measured on ``data``.

    ``metric``: ``"top-1"`` (labelled data), ``"fidelity"`` (to the original's outputs; any images),
    ``"python:FILE.py:FUNCTION"`` or a :class:`Quality`; None: top-1 where ``data`` has labels, else fidelity.
    ``data``: :class:`LabelledData`, or anything :func:`open_labelled` (or, without labels,
    :func:`open_images`) reads; images already preprocessed when float. ``reconstruct``: re-fit the
    layers after each removed block on ``reconstruct.data`` (:mod:`onnxmbs.blocks.refit`); the plan's
    ``reconstruction`` entry says what was fitted and the score after it.
    """
    if rescore not in RESCORE:
        raise MBSError(f"rescore must be one of {RESCORE}, got {rescore!r}")
    loaded = source if isinstance(source, LoadedModel) else load_model(source, input_shape=input_shape)
    quality = metric if isinstance(metric, Quality) else _quality(metric, data, loaded)
    data = _data(data, loaded, labels=quality.needs_labels)
    if quality.needs_labels:
        data.check_classes(num_classes(loaded))
    blocks = find_blocks(loaded)
    if rescore == "refit" and reconstruct is None:
        raise MBSError("rescore='refit' scores the blocks after each re-fit — give reconstruct= options "
                       "(--reconstruct)")
    run = _Run(loaded, source, data, quality, stop, rescore, {b.join: b.id for b in blocks}, batch_size,
               choose_provider(provider), threads, progress, reconstruct)
    state = _State(loaded)
    while not stop.reached(len(state.removed), *zip(_costs(loaded), _costs(state.loaded))):
        start, cpu = time.perf_counter(), time.process_time()
        if not _round(run, state):
            break
        state.times.append((time.perf_counter() - start, time.process_time() - cpu))
    if state.baseline is None:
        state.baseline = run.top1(loaded)
    if not state.confirmed:
        state.confirm(run.top1(state.loaded))
    return _result(run, source, blocks, state, settings, reconstruct)


def _quality(metric: str | None, data: object, loaded: LoadedModel) -> Quality:
    """The score named by ``metric`` (None: top-1 with labels, else fidelity)."""
    if metric is None:
        metric = TOP1 if (isinstance(data, LabelledData) and data.labelled) or has_labels(data) else FIDELITY
    if metric in (TOP1, "accuracy"):
        return top1()
    if metric == FIDELITY:
        return fidelity_to(runnable(loaded))
    if str(metric).startswith("python:"):
        if not isinstance(data, (str, Path)):
            raise MBSError("--metric python:... reads its targets from the data file: give --data FILE.npz")
        return user_metric(str(metric), data)
    raise MBSError(f"unknown metric {metric!r} — use accuracy, fidelity or python:FILE.py:FUNCTION")


def _data(data: LabelledData | object, loaded: LoadedModel, *, labels: bool) -> LabelledData:
    if isinstance(data, LabelledData):
        if labels and not data.labelled:
            raise MBSError("top-1 accuracy needs labels: give labelled data, or score by --metric fidelity")
        return data
    how = {"shape": loaded.input.shape, "layout": loaded.input.layout,
           "preprocess": resolve_normalisation(loaded.metadata, where=loaded.path)}
    return open_labelled(data, **how) if labels else open_images(data, **how)


def _round(run: _Run, state: _State) -> bool:
    """One round: score (unless ranked once already), remove the best block; False when nothing was removed."""
    current = find_blocks(state.loaded, ids=run.ids)
    candidates = {b.id: b for b in current if b.removable}
    if not candidates:
        logger.info("no removable block left after %d removals", len(state.removed))
        return False
    round_no = len(state.removed) + 1
    scores: Mapping[str, float] = {}
    if run.rescore in ("every", "refit") or state.baseline is None:
        measured = run.score(state.loaded, list(candidates.values()), round_no)
        state.confirm(measured.accuracy)  # the prefix pass is a plain run of the current model
        state.baseline = measured.accuracy if state.baseline is None else state.baseline
        scores = measured.scores
        order = [b.id for b in current if b.id in scores]
        state.ranking = sorted(scores, key=lambda b: (-scores[b], -candidates[b].macs, order.index(b)))
    pick = next((b for b in state.ranking if b in candidates), None)
    return pick is not None and _remove(run, state, candidates[pick], scores, round_no)


def _remove(run: _Run, state: _State, block: Block, scores: Mapping[str, float], round_no: int) -> bool:
    """Remove ``block`` from the current model unless that breaks the accuracy budget.

    With scores, the block's score is the accuracy after its removal (confirmed by the next round's
    prefix pass or a final plain run); without (``rescore="once"``), a plain run measures it. With
    ``rescore="refit"`` the model after the removal is re-fitted (:mod:`onnxmbs.blocks.refit`) before the
    next round scores on it."""
    if run.rescore == "refit":
        model, _ = _shallow(run, run.source, [*state.removed, block], run.reconstruct)
    else:
        model = remove_blocks(runnable(state.loaded), [block], check=False)
    loaded = load_model(model, input_shape=state.loaded.input.shape)
    accuracy = scores[block.id] if scores else run.top1(loaded)
    drop = run.stop.max_accuracy_drop
    if drop is not None and state.baseline - accuracy > drop + 1e-12:
        logger.info("removing %s would drop accuracy to %.4f (baseline %.4f): stopping", block.id, accuracy,
                    state.baseline)
        return False
    state.loaded = loaded
    state.removed.append(block)
    state.rounds.append(RoundRecord(round_no, dict(scores), block.id, accuracy))
    state.confirmed = not scores
    return True


def _original_proto(source: str | Path | onnx.ModelProto | LoadedModel, loaded: LoadedModel) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, LoadedModel) or not Path(str(source)).is_file():
        return runnable(loaded)
    return onnx.load(str(source))


def _shallow(run: _Run, source, removed: list[Block],
             reconstruct: ReconstructOptions | None) -> tuple[onnx.ModelProto, Any]:
    """The original proto without the ``removed`` blocks (checked), re-fitted with ``reconstruct``."""
    original = _original_proto(source, run.loaded)
    shallow = original
    for block in removed:
        shallow = remove_blocks(shallow, [block], check=False)
    shallow = remove_blocks(shallow, [], check=True)
    if reconstruct is None or not removed:
        return shallow, None
    from onnxmbs.blocks.refit import reconstruct_shallow

    refitted = reconstruct_shallow(shallow, original, removed, run.loaded, reconstruct)
    return refitted.model, refitted


def _result(run: _Run, source, blocks: list[Block], state: _State,
            settings: Mapping[str, object] | None, reconstruct: ReconstructOptions | None = None) -> BlocksResult:
    shallow, refitted = _shallow(run, source, state.removed, reconstruct)
    after = load_model(shallow, input_shape=run.loaded.input.shape)
    accuracy_after = state.rounds[-1].accuracy if state.rounds else state.baseline
    params, macs = _costs(run.loaded)
    params_after, macs_after = _costs(after)
    doc_settings = BlocksSettings.from_json({
        "rescore": run.rescore, **run.stop.to_json(), "images": len(run.data), "data": run.data.source,
        "metric": run.quality.kind,
        "provider": run.provider, **_normalisation(run.data), **(settings or {})})
    plan = BlocksPlan.create(model=run.loaded.record(), baseline_accuracy=state.baseline,
                             blocks=tuple(BlockRecord.of(b) for b in blocks), rounds=tuple(state.rounds),
                             summary=Summary(params, params_after, macs, macs_after, accuracy_after),
                             settings=doc_settings)
    if refitted is not None:
        score = run.top1(after)
        plan = dataclasses.replace(plan, summary=dataclasses.replace(plan.summary, accuracy_after=score),
                                   extra={**plan.extra, "reconstruction": {
                                       **refitted.to_json(), "score_before": accuracy_after, "score_after": score}})
    return BlocksResult(plan, shallow, tuple(w for w, _ in state.times), tuple(c for _, c in state.times))


def _normalisation(data: LabelledData) -> dict[str, object]:
    """The settings that say how the labelled images were normalised (when it was decided)."""
    norm = data.normalisation
    return {} if norm is None else {"preprocess": norm.name, "normalisation": norm.to_json()}
