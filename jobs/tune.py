"""`ray job submit` entrypoint for searches: `raytt tune`'s flags, run on the cluster the job was submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/tune.py --config configs/tune_wiki768.yaml
    ray job submit ... -- python jobs/tune.py --resume /mnt/shared/tune/wiki768
"""

import sys

from raytt.cli import job

if __name__ == "__main__":
    job("tune", sys.argv[1:])
