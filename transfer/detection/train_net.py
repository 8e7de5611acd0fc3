"""Fine-tune a converted SlotCon backbone with detectron2 (Mask R-CNN R50-FPN 1x on COCO, or VOC detection).

    python train_net.py --config-file configs/COCO_R_50_FPN_1x_SlotCon.yaml --num-gpus 8 \
        MODEL.WEIGHTS /path/to/slotcon_r50.pkl OUTPUT_DIR output/COCO_R_50_FPN_1x_slotcon

Written for detectron2 0.6 (install it yourself: it is not on PyPI). Evaluation: COCO metrics for datasets
whose name contains "coco", Pascal VOC AP for names containing "voc".
"""

from __future__ import annotations

import argparse
import os

try:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import CfgNode, get_cfg
    from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
    from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator, verify_results
    from detectron2.utils import comm
except ImportError as e:
    raise SystemExit(
        f"train_net.py needs detectron2 ({e}); install detectron2 0.6 for your torch/CUDA, e.g. "
        "`pip install 'git+https://github.com/facebookresearch/detectron2.git@v0.6'` "
        "(see https://detectron2.readthedocs.io/en/latest/tutorials/install.html)"
    ) from None

_REMOTE_PREFIXES = ("detectron2://", "http://", "https://", "catalog://", "manifold://")


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        if "coco" in dataset_name:
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        if "voc" in dataset_name:
            return PascalVOCDetectionEvaluator(dataset_name)
        raise NotImplementedError(f"no evaluator for dataset {dataset_name!r}: use a coco_* or voc_* dataset")


def load_config(args: argparse.Namespace) -> CfgNode:
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"{args.config_file}: no such config file")
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def check_weights(cfg: CfgNode, resume: bool) -> None:
    """The SlotCon config's WEIGHTS is a placeholder: fail at once, not in the checkpointer after the model is built."""
    weights = cfg.MODEL.WEIGHTS
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return  # resuming reads OUTPUT_DIR's last checkpoint instead
    if weights and not weights.startswith(_REMOTE_PREFIXES) and not os.path.isfile(weights):
        raise SystemExit(f"MODEL.WEIGHTS {weights!r} is not a file: convert a checkpoint with "
                         "convert_pretrain_to_d2.py and pass MODEL.WEIGHTS /path/to/it.pkl")


def main(args: argparse.Namespace) -> dict | None:
    cfg = load_config(args)
    default_setup(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    check_weights(load_config(args), args.resume)  # before launch, so the message is not lost in worker processes
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
