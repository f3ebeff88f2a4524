"""`ray job submit` entrypoint: synthesise a bank and build its shards on the cluster's storage.

    ray job submit --working-dir . -- python jobs/prepare.py --out /mnt/data/demo \
        --synth-config configs/synth_demo.yaml --build-config configs/build_demo.yaml
"""

import argparse
from pathlib import Path

from raytt import build, config, synth
from raytt.sequences import BuildConfig
from raytt.synthetic import SynthConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--synth-config", type=Path)
    ap.add_argument("--build-config", type=Path)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    synth(args.out / "bank", config.load(SynthConfig, args.synth_config), report=True, overwrite=args.overwrite)
    build(args.out / "bank", args.out / "shards", config.load(BuildConfig, args.build_config), overwrite=args.overwrite)


if __name__ == "__main__":
    main()
