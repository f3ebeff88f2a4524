"""`ray job submit` entrypoint for `raytt import-bank`: the same flags, run where the job's driver runs.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/import_bank.py /mnt/cluster_storage/vectors.npy --out /mnt/cluster_storage/banks/mine \\
        --embedder-id sentence-transformers/gtr-t5-base

The import streams the source on one node (it needs no Ray workers), so SRC and --out must be visible there.
"""

import sys

from raytt.cli import main

if __name__ == "__main__":
    main(["import-bank", *sys.argv[1:]])
