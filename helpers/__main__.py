"""Command line: ``python -m helpers {seed-weights, synthetic, demo}``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "seed-weights", help="copy the offline MobileNetV2 ImageNet file into the torch hub cache"
    )
    syn = sub.add_parser("synthetic", help="write the synthetic metal-nut set in MVTec layout")
    syn.add_argument("--out", default="data/synthetic")
    syn.add_argument("--size", type=int, default=256)
    syn.add_argument("--seed", type=int, default=0)
    demo = sub.add_parser(
        "demo", help="fit + evaluate on the synthetic set (or --data) into a run folder"
    )
    demo.add_argument("--data", default=None, help="MVTec-layout folder; default: synthetic set")
    demo.add_argument("--out", default="runs/demo-engine")
    demo.add_argument("--backbone", default="mobilenet_v2")
    demo.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "seed-weights":
        from .backbones import seed_offline_weights

        return 0 if seed_offline_weights() else 1
    if args.cmd == "synthetic":
        from .synthetic import generate_dataset

        print(generate_dataset(args.out, size=args.size, seed=args.seed))
        return 0
    if args.cmd == "demo":
        from .engine_demo import run_demo

        run_demo(args.data, args.out, args.backbone, args.overwrite)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
