"""The command line, ``python -m helpers COMMAND``:

run          the six notebooks with papermill into one run folder (``run --help``)
demo         ``run`` with the demo preset (MobileNetV2, synthetic set) into runs/demo
predict      score new images with a saved run or bank: CSV, verdicts, overlays (``predict --help``)
export       the whole scoring path of a saved run or bank to ONNX (``export --help``)
synthetic    write the synthetic metal-nut set in the MVTec layout
seed-weights copy the offline MobileNetV2 ImageNet file into the torch hub cache
sync-colab   rewrite the badges, setup cells and README section from REPO_URL
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("run", "demo"):  # the pipeline parses its own options
        from helpers.tools.pipeline import main as pipeline

        if argv[0] == "run":
            return pipeline(argv[1:], prog="python -m helpers run")
        out = [] if "--out" in argv else ["--out", "runs/demo"]
        return pipeline(["--preset", "demo", "--overwrite", "--html", *out, *argv[1:]])
    if argv and argv[0] == "predict":
        from helpers.tools.predict import main as predict

        return predict(argv[1:])
    if argv and argv[0] == "export":
        from helpers.tools.export import main as export

        return export(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m helpers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="the six notebooks into one run folder (run --help)")
    sub.add_parser("demo", help="run with the demo preset into runs/demo")
    sub.add_parser("predict", help="score new images with a saved run or bank (predict --help)")
    sub.add_parser("export", help="a saved run or bank to ONNX (export --help)")
    syn = sub.add_parser("synthetic", help="write the synthetic metal-nut set in MVTec layout")
    syn.add_argument("--out", default="data/synthetic")
    syn.add_argument("--size", type=int, default=256)
    syn.add_argument("--seed", type=int, default=0)
    sub.add_parser("seed-weights", help="copy the offline MobileNetV2 file into the hub cache")
    sub.add_parser("sync-colab", help="rewrite badges, setup cells and README from REPO_URL")
    args = parser.parse_args(argv)

    if args.cmd == "seed-weights":
        from helpers.core.backbones import seed_offline_weights

        return 0 if seed_offline_weights() else 1
    if args.cmd == "synthetic":
        from helpers.data.synthetic import generate_dataset

        print(generate_dataset(args.out, size=args.size, seed=args.seed))
        return 0
    if args.cmd == "sync-colab":
        from helpers.lessons.colab import REPO_URL, sync

        changed = sync()
        print("\n".join(f"updated {p}" for p in changed) or f"already in sync with {REPO_URL}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
