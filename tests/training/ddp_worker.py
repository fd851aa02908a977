"""One process of the torchrun test (tests/training/test_distributed.py); not a test itself.

    python -m torch.distributed.run --nproc_per_node=2 --standalone ddp_worker.py CONFIG OUT_DIR

Trains as CONFIG says, then each rank writes OUT_DIR/rank<r>.pt: its final parameters, its
history (empty off rank 0) and the dataset indices its sampler deals for the first epoch.
"""

import itertools
import os
import sys
from pathlib import Path

import torch

from segfpn.training import distributed, load_config
from segfpn.training.trainer import Trainer


def main(config_path: str, out_dir: str) -> None:
    trainer = Trainer(load_config(config_path), progress=False)
    sampler = trainer.loader.sampler
    first_epoch = [i for i, _ in itertools.islice(iter(sampler), sampler.per_rank)]
    result = trainer.run()
    rank = int(os.environ["RANK"])
    torch.save({"rank": rank, "world_size": trainer.dist.world_size, "state": result.model.state_dict(),
                "history": result.history, "first_epoch": first_epoch},
               Path(out_dir) / f"rank{rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
