"""Run by torchrun (2 CPU processes, gloo) from test_scan: every rank scans, rank 0 saves."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from fmwidget.scan import scan
from tests.scan_data import Noise, model

if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    result = scan(model(), Noise(45), k=5, batch_size=8, progress=False)
    path = sys.argv[1]
    result.save(f"{path}.rank{dist.get_rank()}")
    dist.destroy_process_group()
