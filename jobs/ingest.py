"""`ray job submit` entrypoint for ingestion: `raytt ingest`'s flags, run on the cluster the job was submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/ingest.py --input /mnt/cluster_storage/docs --out /mnt/cluster_storage/banks/docs \\
        --embedder sentence-transformers/gtr-t5-base --actors 4 --device cuda
"""

import sys

from raytt.cli import job

if __name__ == "__main__":
    job("ingest", sys.argv[1:])
