"""The command line, ``python -m helpers COMMAND``:

run          the six notebooks with papermill into one run folder (``run --help``)
demo         ``run`` with the demo preset (MobileNetV2, synthetic set) into runs/demo
predict      score new images with a saved run or bank: CSV, verdicts, overlays (``predict --help``)
export       the whole scoring path of a saved run or bank to ONNX (``export --help``)
synthetic    write the synthetic metal-nut set in the MVTec layout (``--out --size --seed``)
seed-weights copy the offline MobileNetV2 ImageNet file into the torch hub cache
sync-colab   rewrite the badges, setup cells and README section from REPO_URL
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd, rest = (argv[0], argv[1:]) if argv else ("", [])
    if cmd in ("run", "demo"):  # parses its own options
        from helpers.tools import kernels  # no torch: the first kernel starts before it loads

        first = kernels.start_early(rest)
        try:
            from helpers.tools import pipeline

            if cmd == "demo":
                out = [] if "--out" in rest else ["--out", "runs/demo"]
                rest = ["--preset", "demo", "--overwrite", "--html", *out, *rest]
            return pipeline.main(rest, first=first)
        finally:
            kernels.stop(first)  # used and stopped by the job already, or never used
    if cmd in ("predict", "export"):  # each parses its own options
        from helpers.tools import export, predict

        return {"predict": predict, "export": export}[cmd].main(rest)
    if cmd == "seed-weights":
        from helpers.core.backbones import seed_offline_weights

        return 0 if seed_offline_weights() else 1
    if cmd == "synthetic":
        from helpers.data.synthetic import generate_dataset

        add = (ap := argparse.ArgumentParser(prog="python -m helpers synthetic")).add_argument
        add("--out", default="data/synthetic")
        add("--size", type=int, default=256)
        add("--seed", type=int, default=0)
        args = ap.parse_args(rest)
        print(generate_dataset(args.out, size=args.size, seed=args.seed))
        return 0
    if cmd == "sync-colab":
        from helpers.lessons.colab import REPO_URL, sync

        changed = sync()
        print("\n".join(f"updated {p}" for p in changed) or f"already in sync with {REPO_URL}")
        return 0
    print(__doc__, file=sys.stdout if cmd in ("", "-h", "--help") else sys.stderr)
    return 0 if cmd in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
