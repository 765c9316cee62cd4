"""The model inside the wrappers training puts around it (torch.compile's, DDP's), which pass on neither its
config nor its class."""

from __future__ import annotations

import torch
import torch.nn as nn


def unwrapped(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, torch._dynamo.eval_frame.OptimizedModule)):
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model._orig_mod
    return model
