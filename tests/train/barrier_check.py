"""Run under `python -m paddle.distributed.launch --nproc_per_node 2 barrier_check.py OUT SLEEP_S`: rank 0 works
alone for SLEEP_S seconds (as when it writes a checkpoint or generates data), then both ranks pass two
barriers and an all-reduce; each rank writes OUT/rank<r>.txt with what it saw."""
import os
import sys
import time

import paddle
import paddle.distributed as pdist

from ernievil2.train import distributed as edist

out, sleep_s = sys.argv[1], float(sys.argv[2])
pdist.init_parallel_env()
rank = edist.get_rank()
if rank == 0:
    time.sleep(sleep_s)
edist.barrier()
edist.barrier(timeout_s=60)
total = paddle.to_tensor([float(rank + 1)])
pdist.all_reduce(total)
with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
    f.write(f"{float(total.numpy()[0])}\n")
