"""All-to-all bandwidth between the GPUs of this host through PyTorch's NCCL, at the sizes
Ulysses sequence parallelism exchanges (the Wan 1.3B at 832x480x81, batch 2: q, k and v of a
rank's tokens, 150 MB; the attention output, 50 MB). Prints NCCL's transport lines too.

    NCCL_DEBUG=INFO python3 nccl_bandwidth.py [GPUS]
"""
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run(rank, world):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    for mbytes in [50, 150]:
        x = torch.randn(mbytes * 1024 * 1024 // 2, dtype=torch.bfloat16, device="cuda")
        y = torch.empty_like(x)
        for _ in range(3):
            dist.all_to_all_single(y, x)
        torch.cuda.synchronize()
        n = 20
        start = time.perf_counter()
        for _ in range(n):
            dist.all_to_all_single(y, x)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / n * 1e3
        sent = mbytes * (world - 1) / world
        if rank == 0:
            print(f"all-to-all of {mbytes} MB per rank over {world} GPUs: {ms:.2f} ms, "
                  f"{sent / ms:.1f} GB/s sent per rank", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else torch.cuda.device_count()
    mp.spawn(run, args=(world,), nprocs=world)
