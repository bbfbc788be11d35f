"""The ``vit`` command: list architectures, describe the environment, check parity, convert checkpoints, train,
evaluate, predict, plot a run's curves.

One module per command; this one builds the parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vit_parity.tools import data
from vit_parity.tools.cli.common import DefaultsFormatter
from vit_parity.tools.cli.convert import cmd_convert
from vit_parity.tools.cli.evaluate import cmd_eval
from vit_parity.tools.cli.import_reference import LIBRARIES, cmd_import
from vit_parity.tools.cli.info import cmd_info, gemm_shape
from vit_parity.tools.cli.inspect import cmd_check, cmd_list
from vit_parity.tools.cli.plot import cmd_plot
from vit_parity.tools.cli.predict import cmd_predict
from vit_parity.tools.cli.train import cmd_train


def _add_main_job(sub: argparse._SubParsersAction) -> None:
    backends = ("torch", "flax")
    p = sub.add_parser(
        "train",
        help="train a classifier on built-in or folder data; writes OUT/checkpoint and OUT/metrics.json",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--arch", required=True, help="architecture name (see `vit list`)")
    p.add_argument("--backend", choices=backends, help="framework to train in (default: torch if installed)")
    p.add_argument("--data", required=True, help=f"{', '.join(data.BUILTIN)}, or a folder of class sub-folders")
    p.add_argument("--out", default="runs/vit", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (after the new first epoch)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    g.add_argument("--batch-size", type=int, default=64, help="samples per step")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (linear warmup, cosine decay)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW decay of weight matrices")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="of the cross-entropy targets")
    g.add_argument("--shift", type=int, default=0, help="random translation of training samples, in pixels")
    g.add_argument("--eval-fraction", type=float, default=0.2, help="held-out share of every class")
    g.add_argument("--seed", type=int, default=0, help="seeds the weights, split, batches and generated data")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("speed")
    g.add_argument("--threads", type=int, help="CPU threads to compute on (default: as many as the process has cores)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: bfloat16 compute, fp32 weights")
    g.add_argument("--compile", action="store_true", help="torch: train through torch.compile (flax: always jit)")
    g = p.add_argument_group("data")
    g.add_argument(
        "--image-size", type=int, help="side of built-in images, frames, volumes (16); folders: resize target"
    )
    g.add_argument("--frames", type=int, help="clip length of digits-video and of video files (default 8)")
    g.add_argument(
        "--frame-stride", type=int, help="take every k-th frame of video files instead of sampling --frames uniformly"
    )
    g.add_argument("--workers", type=int, help="processes decoding data files (default: up to 4 for large folders)")
    g.add_argument("--samples", type=int, help="number of shapes-volume samples (default 500)")
    g.add_argument("--limit", type=int, help="use at most this many samples (quick runs)")
    g = p.add_argument_group("model size (filled in by name; --set for anything else)")
    g.add_argument("--dim", type=int, default=64, help="token width")
    g.add_argument("--depth", type=int, default=4, help="also spatial_depth and temporal_depth")
    g.add_argument("--heads", type=int, default=4, help="attention heads")
    g.add_argument("--mlp-dim", type=int, help="default: 2 * dim")
    g.add_argument("--dim-head", type=int, help="default: dim // heads")
    g.add_argument("--patch-size", type=int, default=4, help="also image_patch_size")
    g.add_argument("--frame-patch-size", type=int, default=2, help="frames per tubelet (videos, volumes)")
    g.add_argument("--pool", choices=("cls", "mean"), help="default: the architecture's")
    g.add_argument("--dropout", type=float, default=0.0, help="in attention and MLPs")
    g.add_argument("--emb-dropout", type=float, default=0.0, help="on the embedded tokens")
    g.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="any constructor argument")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy and per-class accuracy of a trained checkpoint")
    p.add_argument("checkpoint", help="checkpoint folder (or a `vit train --out` folder)")
    p.add_argument(
        "--data",
        help=f"{', '.join(data.BUILTIN)}, or a folder of class sub-folders (default: the data it was trained on)",
    )
    p.add_argument("--backend", choices=(*backends, "both"), help="default: the checkpoint's; both: compare them")
    p.add_argument(
        "--split", choices=("auto", "eval", "train", "all"), default="auto",
        help="auto: the held-out split when --data is the training data, else all of it",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="bf16: bfloat16 compute (also reports how often it gives the fp32 prediction)",
    )  # fmt: skip
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the confusion matrix into this PNG file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes for image, video or volume files, or arrays (.npy)")
    p.add_argument("checkpoint", help="checkpoint folder (or a `vit train --out` folder)")
    p.add_argument(
        "files", nargs="+",
        help="images (.png, .jpg), videos (.mp4, .avi, .webm, .mov), volumes (.nii, .nii.gz, a DICOM series "
        "folder) or .npy arrays (channels first)",
    )  # fmt: skip
    p.add_argument("--backend", choices=backends, help="default: the checkpoint's")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", help="also write the predictions to this JSON file")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plot", help="loss and accuracy curves of a `vit train` run, as a PNG")
    p.add_argument("run", help="a `vit train --out` folder (reads its metrics.jsonl)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="where to draw them (default: RUN/curves.png)")
    p.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit", description="Vision Transformers in PyTorch and JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="every architecture with its torch / flax / parity status")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="versions, CPU vector units, threads, devices, vit_torch's GEMM path")
    p.add_argument(
        "--gemm", type=gemm_shape, metavar="DIM,MLP,TOKENS", nargs="?", const=(384, 1536, 1576),
        help="also measure which path each dense product of such a block takes (alone: ViT-S/16, 8 images at 224)",
    )  # fmt: skip
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("check", help="cross-backend parity of logits and every block's output")
    p.add_argument("arch", nargs="*", help="architectures to check (default: all)")
    p.add_argument("--all", action="store_true", help="check every architecture")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("convert", help="rewrite a checkpoint in the other backend's layout")
    p.add_argument("src", help="checkpoint folder (or a `vit train --out` folder)")
    p.add_argument("--to", required=True, choices=("torch", "flax"))
    p.add_argument("-o", "--output", required=True, help="destination folder")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("import", help="import a vit-pytorch state dict as a checkpoint (same logits)")
    p.add_argument("library", choices=LIBRARIES, help="the library that saved the weights")
    p.add_argument("state_dict", help="file written by torch.save(model.state_dict(), ...)")
    p.add_argument("--arch", required=True, help="architecture name here (see `vit list`)")
    p.add_argument("--config", required=True, help="JSON object of the reference model's constructor arguments")
    p.add_argument("-o", "--output", required=True, help="destination checkpoint folder")
    p.set_defaults(func=cmd_import)

    _add_main_job(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)
