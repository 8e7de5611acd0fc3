"""Fine-tune and evaluate a SlotCon ViT with detectron2's LazyConfig machinery (ViTDet Mask R-CNN).

    cd transfer/detection
    python lazy_train_net.py --config-file configs/ViTDet/COCO_mask_rcnn_vitdet_b_100ep_SlotCon.py --num-gpus 8 \
        train.init_checkpoint=/path/to/vit_base_d2.pth train.output_dir=../../output/vitdet_b_slotcon

Your own COCO-format data (its categories give the class names and ``model.roi_heads.num_classes``):

    python lazy_train_net.py --config-file configs/ViTDet/Demo_mask_rcnn_vitdet_t_SlotCon.py \
        --train-json train.json --train-images train/ --val-json val.json --val-images val/ \
        train.init_checkpoint=vit_tiny_d2.pth train.output_dir=../../output/mine train.device=cpu

``--eval-only`` evaluates ``train.init_checkpoint`` (e.g. a ``model_final.pth``); ``--resume`` continues from the
last checkpoint in ``train.output_dir``. Overrides are ``key=value`` pairs on the config's keys (a value is read as
a Python literal where it is one, else as a string). The weights file is a SlotCon checkpoint's ViT exported for
the config's ViTDet (``python -m transfer.export CKPT --to detectron2 OUT.pkl``, with ``--image-size 128
--window-size 4`` for the demo config; or convert_pretrain_to_d2.py with the same flags); it must hold exactly the
config's ViT tensors (``backbone.net.*``, names and shapes), which is checked before anything is built, since
detectron2 would otherwise skip missing or mismatched tensors with a warning. ``train.init_checkpoint=""``
trains from random initialisation. The final numbers go to ``train.output_dir/results.json``.

The training loop is detectron2's own (``SimpleTrainer``, or ``AMPTrainer`` with ``train.amp.enabled``, and its
hooks: timer, lr scheduler, periodic checkpoints, evaluation every ``train.eval_period`` and after the last
iteration, metric writers), as in its ``tools/lazyconfig_train_net.py``. Bad input stops with one line.
"""

from __future__ import annotations

import argparse
import ast
import os
import pickle
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by path, as the other detection scripts: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

try:
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import (
        AMPTrainer,
        SimpleTrainer,
        create_ddp_model,
        default_setup,
        default_writers,
        hooks,
    )
    from detectron2.evaluation import inference_on_dataset, print_csv_format
    from detectron2.utils import comm
    from omegaconf import OmegaConf
except ImportError as e:
    raise SystemExit(
        f"lazy_train_net.py needs detectron2 ({e}): run `bash transfer/detection/install_detectron2.sh`"
    ) from None

# The command line, the data flags, the checks of a COCO-format set and the results file are train_net.py's.
from transfer.detection.train_net import (
    _REMOTE_PREFIXES,
    TRAIN_SET,
    VAL_SET,
    command_with,
    first_line,
    launch_processes,
    parse_args,
    read_coco_categories,
    save_results,
)

NET_PREFIX = "backbone.net."
_PLACEHOLDER = "SET_ME"
# Keys detectron2 reads with a default although the common configs do not set them: overriding them adds them.
_OPTIONAL_KEYS = ("train.seed", "train.cudnn_benchmark", "train.float32_precision")
_MISSING = object()


def register_own_datasets(args: argparse.Namespace, cfg: Any) -> None:
    """Register ``--train-json/--val-json`` as COCO-format sets and point the config's loaders and classes at them."""
    classes: dict[str, list[str]] = {}
    for split, name, loader in (("train", TRAIN_SET, "train"), ("val", VAL_SET, "test")):
        json_file, image_root = getattr(args, f"{split}_json"), getattr(args, f"{split}_images")
        if json_file is None and image_root is None:
            continue
        if json_file is None or image_root is None:
            raise SystemExit(f"--{split}-json and --{split}-images go together")
        classes[split] = read_coco_categories(json_file, image_root, f"--{split}")
        if name in DatasetCatalog:  # main() runs in-process after the checks, and again in spawned workers
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {"thing_classes": classes[split]}, json_file, image_root)
        cfg.dataloader[loader].dataset.names = name
    if len(classes) == 2 and classes["train"] != classes["val"]:
        raise SystemExit(
            f"{args.train_json} and {args.val_json} have different categories: {classes['train']} vs {classes['val']}"
        )
    if classes:
        cfg.model.roi_heads.num_classes = len(next(iter(classes.values())))


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value), the value a Python literal where it is one (``3``, ``(2,)``, ``True``)."""
    key, sep, text = item.partition("=")
    if not sep or not key or key.startswith("-"):
        hint = " (flags go before the key=value overrides)" if item.startswith("--") else ""
        raise SystemExit(f"config override {item!r}: expected key=value{hint}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a path, a name...
    return key, value


def apply_overrides(cfg: Any, opts: list[str]) -> None:
    """Set ``key=value`` overrides on existing keys only (OmegaConf would silently add a misspelt one)."""
    for item in opts:
        key, value = parse_override(item)
        if key not in _OPTIONAL_KEYS and OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise SystemExit(f"config override {item!r}: the config has no key {key!r}")
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except Exception as e:  # omegaconf raises its own types for values of the wrong kind
            raise SystemExit(f"config override {item!r}: {first_line(e)}") from None


def load_config(args: argparse.Namespace) -> Any:
    """The LazyConfig with the data flags and the overrides applied."""
    path = args.config_file
    if not path or not os.path.isfile(path):
        raise SystemExit(f"{path or '--config-file'}: no such config file")
    try:
        cfg = LazyConfig.load(path)
    except Exception as e:  # a config is arbitrary Python: report whatever it raised, on one line
        raise SystemExit(f"{path}: {type(e).__name__}: {first_line(e)}") from None
    for key in ("model", "train", "dataloader", "optimizer", "lr_multiplier"):
        if key not in cfg:
            raise SystemExit(f"{path}: not a LazyConfig training config (no {key!r})")
    register_own_datasets(args, cfg)
    apply_overrides(cfg, args.opts)
    return cfg


def check_devices(args: argparse.Namespace, cfg: Any, argv: list[str]) -> None:
    """The devices the command asks for must exist; otherwise one line saying what to run on this machine.

    ``dataloader.train.total_batch_size`` is the batch over all processes, so fewer GPUs keep the experiment
    (more images per GPU).
    """
    device = str(cfg.train.device)
    available = torch.cuda.device_count()
    amp = bool(cfg.train.amp.enabled)
    if not device.startswith("cuda"):
        extra = ["train.amp.enabled=False"] if amp else []
        if args.num_gpus > 1 or amp:
            why = "detectron2's AMPTrainer is for CUDA" if amp else f"train.device={device} runs one process"
            raise SystemExit(f"lazy_train_net.py: {why}; run instead: {command_with(argv, 1, extra)}")
    elif available == 0:
        extra = ["train.device=cpu", *(["train.amp.enabled=False"] if amp else [])]
        raise SystemExit(
            "lazy_train_net.py: this machine has no GPU; to train on its CPU (one process), run instead: "
            f"{command_with(argv, 1, extra)}"
        )
    elif args.num_gpus > available:
        raise SystemExit(
            f"lazy_train_net.py: --num-gpus {args.num_gpus} but this machine has {available}; run instead: "
            f"{command_with(argv, available, [])}"
        )


def check_datasets(cfg: Any) -> None:
    """Every dataset the loaders name must be registered, with its annotation file and images on disk."""
    for loader in ("train", "test"):
        names = cfg.dataloader[loader].dataset.names
        for name in [names] if isinstance(names, str) else list(names):
            if name not in DatasetCatalog:
                raise SystemExit(
                    f"dataset {name!r} (dataloader.{loader}) is not registered: pass --train-json/--train-images "
                    "and --val-json/--val-images, or use one of detectron2's builtin names"
                )
            meta = MetadataCatalog.get(name)
            for attr in ("json_file", "image_root"):
                where = getattr(meta, attr, None)
                if where and not os.path.exists(where):
                    raise SystemExit(
                        f"dataset {name!r}: {where} does not exist (set DETECTRON2_DATASETS to the folder holding "
                        "coco/, or pass your own data with --train-json ...)"
                    )


def check_crop_dependency(cfg: Any) -> None:
    """Cropping polygon masks (LSJ's FixedSizeCrop) needs shapely, an optional detectron2 dependency: say so now."""
    mapper = cfg.dataloader.train.mapper
    crops = [
        getattr(aug.get("_target_"), "__name__", str(aug.get("_target_")))
        for aug in mapper.get("augmentations", [])
        if "Crop" in getattr(aug.get("_target_"), "__name__", str(aug.get("_target_")))
    ]
    if crops and mapper.get("use_instance_mask", False):
        try:
            import shapely  # noqa: F401
        except ImportError:
            raise SystemExit(
                f"dataloader.train.mapper crops ({crops[0]}) polygon masks, which needs shapely: pip install shapely"
            ) from None


def read_weights(path: str) -> dict[str, Any]:
    """The ``model`` tensors of a detectron2 weights file (.pth from torch.save, or a detectron2 .pkl)."""
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                obj = pickle.load(f, encoding="latin1")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch and pickle raise many types for foreign files
        raise SystemExit(f"{path}: not a loadable weights file ({type(e).__name__}: {first_line(e)})") from None
    model = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(model, dict):
        raise SystemExit(f"{path}: no 'model' dict of tensors")
    return model


def check_weights(cfg: Any, resume: bool) -> None:
    """``train.init_checkpoint`` must hold exactly the config's ViT tensors (names and shapes) before any training.

    ``""`` trains from random initialisation; a resumed run reads ``train.output_dir``'s last checkpoint instead.
    """
    weights = str(cfg.train.init_checkpoint)
    if resume and os.path.isfile(os.path.join(str(cfg.train.output_dir), "last_checkpoint")):
        return
    if not weights or weights.startswith(_REMOTE_PREFIXES):
        return
    if weights.startswith(_PLACEHOLDER) or not os.path.isfile(weights):
        raise SystemExit(
            f"train.init_checkpoint {weights!r} is not a file: export a SlotCon checkpoint's ViT with "
            "python -m transfer.export CKPT --to detectron2 OUT.pkl and pass train.init_checkpoint=OUT.pkl"
        )
    found = {k: tuple(v.shape) for k, v in read_weights(weights).items() if k.startswith(NET_PREFIX)}
    if not found:
        raise SystemExit(
            f"{weights}: no ViTDet backbone tensors ({NET_PREFIX}*); export with python -m transfer.export "
            "--to detectron2"
        )
    # Built on the CPU (meta tensors cannot run ViT's constructor): seconds for a ViT-B.
    net = instantiate(cfg.model.backbone.net)
    expected = {NET_PREFIX + k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    # Real weights first: relative-position tables differ whenever the image or window size does.
    wrong = sorted(
        (k for k in set(expected) & set(found) if expected[k] != found[k]), key=lambda k: ("rel_pos" in k, k)
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the config's ViT tensors missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of other shapes (e.g. {wrong[0]}: {found[wrong[0]]} vs {expected[wrong[0]]})")
        raise SystemExit(
            f"{weights} does not fit the config's model.backbone.net: {', '.join(parts)}; export the same arch "
            "with python -m transfer.export --to detectron2 and the config's --image-size / --window-size"
        )


def do_test(cfg: Any, model: torch.nn.Module) -> dict:
    """COCO evaluation of ``model`` on ``dataloader.test`` (box and mask AP)."""
    evaluator = cfg.dataloader.evaluator
    if "output_dir" not in evaluator:
        evaluator.output_dir = os.path.join(str(cfg.train.output_dir), "inference")
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args: argparse.Namespace, cfg: Any) -> dict:
    """detectron2's LazyConfig training loop; returns the evaluation after the last iteration."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last: dict = {}

    def evaluate() -> dict:
        last.clear()
        last.update(do_test(cfg, model))
        return last

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last)


def main(args: argparse.Namespace) -> dict:
    """One process's job (``launch`` runs it once per GPU): set up, then train or evaluate."""
    cfg = load_config(args)
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        results = do_test(cfg, model)
    else:
        results = do_train(args, cfg)
    save_results(str(cfg.train.output_dir), results)
    return results


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # Every check before launch, so that a message is not lost in worker processes.
    cfg = load_config(args)
    check_devices(args, cfg, [sys.argv[0] if sys.argv[0].endswith(".py") else "lazy_train_net.py", *argv])
    check_datasets(cfg)
    if not args.eval_only:
        check_crop_dependency(cfg)
    check_weights(cfg, args.resume)
    launch_processes(main, args)


if __name__ == "__main__":
    cli()
