"""The one sha256 of a module's weights: the model id, and the names of re-initialised encoders and DDP ranks' weights."""
from __future__ import annotations

import hashlib

import torch


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (hex) over the tensors of the state dict, in name order: names, shapes and raw bytes, so the digest of a
    checkpoint and of its export agree, and any change of value, shape or dtype changes it. Non-tensor extra state (the
    text table's label list) is not hashed: the table's tensor already is."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        if tensor.numel():
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
