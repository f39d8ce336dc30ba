"""``onnxmbs retrain``: apply a plan to a model, retrain the compact model, export it.

    onnxmbs retrain --zoo resnet20 --plan plan.json --data train.npz --epochs 30 -o compact.onnx
    onnxmbs retrain --model my_model.pt --plan plan.json --data images/ --init inherit -o compact.onnx
    onnxmbs retrain --model my_model.pt --blocks blocks.json --data train.npz --lr 0.01 -o shallow.onnx

``--blocks`` removes a blocks plan's blocks first (the model keeps its other weights: fine-tuning);
with ``--plan`` too, the MBS plan must have been made on the shallow ONNX model
(``onnxmbs blocks ... --output-model shallow.onnx`` then ``onnxmbs plan shallow.onnx``).

The model is a zoo architecture (``--zoo``, built at full width then narrowed by the plan;
weights start from scratch as in the paper) or your own: a pickled ``nn.Module`` (``.pt``/
``.pth``), a Keras model file (``.keras``/``.h5``), or ``file.py:function`` returning a
``nn.Module`` or Keras model. Torch and Keras are imported only when used.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import click

from onnxmbs.cli.options import clean_errors, normalisation_options, progress_option, seed_option, training_options
from onnxmbs.errors import MBSError

if TYPE_CHECKING:
    from onnxmbs.planning.document import PlanDocument

logger = logging.getLogger(__name__)

def _input(plan: PlanDocument) -> tuple[int, int, int]:
    """(channels, height, width) of the planned model's input."""
    return _record_input(plan.model.shape, plan.model.layout)


def _record_input(shape, layout: str) -> tuple[int, int, int]:
    return (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])


def _data(data: str, val: str | None, val_split: float, *, layout: str, normalisation: Any,
          chw: tuple[int, int, int], seed: int):
    from onnxmbs.data.training import load_dataset

    kwargs = {"layout": layout, "normalisation": normalisation, "size": chw[1:], "channels": chw[0]}
    train = load_dataset(data, **kwargs)
    if val is not None:
        return train, load_dataset(val, **kwargs)
    if val_split <= 0:
        return train, None
    return train.split(val_split, seed=seed)


def _framework_params(model: Any, framework: str) -> tuple[int, str]:
    """The framework's own parameter count and what it includes."""
    if framework == "torch":
        return sum(p.numel() for p in model.parameters()), "PyTorch parameters(), BatchNorm unfolded"
    return int(model.count_params()), "Keras count_params(), BatchNorm moving statistics included"


def params_text(model: Any, compact: Any, fw: str, chw: tuple[int, int, int], predicted: int, *,
                kind: str = "compact") -> str:
    """Counts as the plan counts them (ONNX, BatchNorm folded into the conv), then the framework's own."""
    from onnxmbs.adapters import count_params

    before, after = count_params(model, fw, chw), count_params(compact, fw, chw)
    (own_before, what), (own_after, _) = _framework_params(model, fw), _framework_params(compact, fw)
    return (f"{kind} model: {before:,} -> {after:,} parameters counted as the plan counts them (ONNX, BatchNorm "
            f"folded; the plan predicts {predicted:,})\n"
            f"{' ' * len(kind)}        {own_before:,} -> {own_after:,} as {what}")


def _export(model: Any, framework: str, chw: tuple[int, int, int], path: str, metadata: dict[str, str]) -> None:
    from onnxmbs.zoo.export import export_keras, export_torch

    if framework == "torch":
        export_torch(model.cpu(), chw, path, metadata=metadata)
    else:
        from onnxmbs.runtime.frameworks import import_keras

        keras = import_keras()

        export_keras(keras.Model(model.inputs, model.outputs, name=model.name), path, metadata=metadata)


def _save(model: Any, framework: str, path: str) -> None:
    if framework == "torch":
        import torch

        torch.save(model.cpu(), path)
    else:
        model.save(path)


@click.command()
@click.option("--plan", "plan_path", default=None, type=click.Path(dir_okay=False),
              help="Plan JSON from `onnxmbs plan` (with --blocks: planned on the shallow model).")
@click.option("--blocks", "blocks_path", default=None, type=click.Path(dir_okay=False),
              help="Blocks plan JSON from `onnxmbs blocks`: remove its blocks first (then --plan, if given).")
@click.option("--zoo", "zoo_name", default=None, help="A zoo architecture, e.g. resnet20 (see `onnxmbs zoo list`).")
@click.option("--framework", type=click.Choice(["torch", "keras"]), default=None,
              help="Zoo builder (default: the model's first).")
@click.option("--model", "model_spec", default=None,
              help="Your model: .pt/.pth (torch.save(model)), .keras, or FILE.py:FUNCTION.")
@click.option("--data", required=True, type=click.Path(),
              help="Training data: .npz (x, y) or a folder of class folders.")
@click.option("--val", default=None, type=click.Path(), help="Held-out data (default: --val-split of --data).")
@click.option("--val-split", type=click.FloatRange(0, 0.9), default=0.1, show_default=True)
@normalisation_options
@click.option("--init", type=click.Choice(["scratch", "inherit"]), default="scratch", show_default=True)
@training_options
@seed_option()
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the compact model as ONNX.")
@click.option("--save", type=click.Path(dir_okay=False), default=None, help="Save the trained model (.pt or .keras).")
@progress_option(help="A progress bar per epoch with loss and accuracy (default: on a terminal).")
@clean_errors
def retrain(plan_path: str | None, blocks_path: str | None, zoo_name: str | None, framework: str | None,
            model_spec: str | None, data: str, val: str | None, val_split: float, preprocess: str | None, mean, std,
            init: str, output: str | None, save: str | None, progress: bool | None, **train_options) -> None:
    """Remove a blocks plan's blocks and/or apply a PLAN's widths, retrain, report accuracy and size, export."""
    from onnxmbs.train import TrainConfig
    from onnxmbs.adapters import adapt
    from onnxmbs.runtime.frameworks import framework_of, require_framework
    from onnxmbs.train.frameworks import load_user_model, train_model
    from onnxmbs.zoo import build, lookup

    if (zoo_name is None) == (model_spec is None):
        raise click.UsageError("give exactly one of --zoo NAME or --model FILE")
    if plan_path is None and blocks_path is None:
        raise click.UsageError("give --plan PLAN.json (MBS widths), --blocks BLOCKS.json (block pruning), or both")
    if zoo_name is not None and init == "inherit":
        raise MBSError("--init inherit needs trained weights — pass your trained model with --model, "
                       "or use --init scratch")
    plan, blocks = _plans(plan_path, blocks_path)
    config = TrainConfig(**train_options)
    chw = _input(plan) if plan is not None else _record_input(blocks.model.shape, blocks.model.layout)
    user = load_user_model(model_spec) if model_spec else None
    fw = framework_of(user) if user is not None else (framework or lookup(zoo_name).framework)
    require_framework(fw, "onnxmbs retrain" + (f" --zoo {zoo_name}" if zoo_name else ""), export=output is not None)
    norm = _normalisation(plan, blocks, preprocess, mean=mean, std=std)
    train, held = _data(data, val, val_split, layout="NCHW" if fw == "torch" else "NHWC",
                        normalisation=norm, chw=chw, seed=config.seed)
    model = user if user is not None else build(lookup(zoo_name).name, num_classes=train.num_classes,
                                                input_size=chw[1], framework=fw)
    shallow = _remove_blocks(model, fw, blocks, chw) if blocks is not None else model
    compact = adapt(shallow, fw, plan, chw, init) if plan is not None else shallow
    predicted = plan.summary.params_compact if plan is not None else blocks.summary.params_after
    click.echo(params_text(model, compact, fw, chw, predicted, kind="compact" if plan is not None else "shallow"))
    result = train_model(compact, fw, train, held, config, progress=progress)
    _finish(compact, fw, chw, result, 0 if held is None else len(held), save=save, output=output,
            metadata=norm.metadata())


def _normalisation(plan: Any, blocks: Any, preset: str | None, *, mean, std) -> Any:
    """The one rule, with the plan's (else the blocks plan's) recorded normalisation standing in for the
    ONNX metadata a PyTorch/Keras model does not have."""
    from onnxmbs.data.normalisation import resolve_normalisation

    recorded = _recorded((plan or blocks).settings)
    model = (plan or blocks).model.path
    return resolve_normalisation({}, preset, mean=mean, std=std, recorded=recorded,
                                 where=f"the training data of {model}")


def _recorded(settings: Any) -> Any:
    """The normalisation a plan or blocks plan records (older ones: their preset name, when it is one)."""
    from collections.abc import Mapping

    from onnxmbs.data.normalisation import PRESETS, Normalisation

    get = settings.get if isinstance(settings, Mapping) else lambda key: getattr(settings, key, None)
    recorded, name = get("normalisation"), get("preprocess")
    if isinstance(recorded, Mapping):
        recorded = Normalisation.from_json(recorded, where="the plan's settings")
    if recorded is not None:
        return recorded
    return Normalisation(name) if isinstance(name, str) and name in PRESETS else None


def _plans(plan_path: str | None, blocks_path: str | None) -> tuple[Any, Any]:
    """The MBS plan and the blocks plan, each None when not given."""
    plan = blocks = None
    if plan_path is not None:
        from onnxmbs.planning.document import read_plan

        plan = read_plan(plan_path)
    if blocks_path is not None:
        from onnxmbs.blocks.document import read_blocks_plan

        blocks = read_blocks_plan(blocks_path)
    return plan, blocks


def _remove_blocks(model: Any, framework: str, blocks: Any, chw: tuple[int, int, int]) -> Any:
    from onnxmbs.adapters.blocks import remove_blocks_from

    if framework == "torch":
        import torch

        return remove_blocks_from(model, blocks, torch.zeros(1, *chw))
    return remove_blocks_from(model, blocks)


def _finish(compact: Any, fw: str, chw: tuple[int, int, int], result: Any, held: int, *, save: str | None,
            output: str | None, metadata: dict[str, str]) -> None:
    acc = result.val_accuracy
    click.echo(f"trained {len(result.epochs)} epochs in {result.seconds:.0f} s; held-out accuracy "
               f"{'n/a' if acc is None else f'{acc:.2%}'} ({held} images)")
    if save:
        _save(compact, fw, save)
        click.echo(f"model saved to {save}")
    if output:
        _export(compact, fw, chw, output, metadata)
        click.echo(f"compact ONNX written to {output}")
