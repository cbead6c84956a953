"""Checkpoint artefacts checked against the parameter hash their model version recorded.

A version's `checkpoint_uri` names the file its parameters were saved to (the SDK's
checkpoint hook writes `torch.save({"model": state_dict, ...})` to a `file://` URI). When
that file is reachable from where the report is built, its model state is hashed the way
TorchCapture.parameter_hash hashes a model (each parameter's name, then its bytes, in
order) and compared with the recorded hash. Statuses: verified, mismatch, unreachable,
none recorded, not checked (the reason says why: another scheme, no torch here, a state
that holds buffers, so which entries are parameters is not recorded).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def check_checkpoint(uri: str, parameter_hash: str) -> tuple[str, str]:
    """(status, detail) of one version's checkpoint."""
    if not uri:
        return "none recorded", "the version recorded no checkpoint"
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return "not checked", f"only file:// checkpoints are read here, not {parts.scheme}://"
    path = Path(unquote(parts.path))
    if not path.is_file():
        return "unreachable", f"{path} is not a file reachable from here"
    try:
        import torch
    except ImportError:
        return "not checked", "torch is not installed where the report is built"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not raised
        return "not checked", f"{path.name} does not load as a torch state ({exc})"[:300]
    model = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(model, dict) or not all(hasattr(v, "numpy") for v in model.values()):
        return "not checked", f"{path.name} holds no model state dict"
    if any(str(k).endswith(BUFFER_SUFFIXES) for k in model):
        return "not checked", ("the state holds buffers as well as parameters; which entries "
                               "are parameters is not recorded")
    digest = hashlib.sha256()
    for name, tensor in model.items():
        digest.update(str(name).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if digest.hexdigest() == parameter_hash:
        return "verified", f"{path.name} hashes to the recorded parameter hash"
    return "mismatch", (f"{path.name} hashes to {digest.hexdigest()[:16]}…, not the recorded "
                        f"{parameter_hash[:16]}…: the artefact is not this version")
