"""`ray job submit` entrypoint for training: `raytt train`'s flags, run on the cluster the job was submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train.py --config configs/wiki768.yaml --storage s3://bucket/runs --eval test

Data paths must be visible to every node (a shared mount); `--storage` may be a path or a URI.
"""

import sys

from raytt.cli import job

if __name__ == "__main__":
    job("train", sys.argv[1:])
