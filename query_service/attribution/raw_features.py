"""Test gradients from raw features, for the models whose gradient needs no parameters.

For a linear model f(x) = x·coef + intercept (the SDK's LinearCapture, framework "numpy"),
∇_θ f = [x, 1] whatever the parameters are, so the service can compute φ' = P[x, 1] from the
features alone, with the projection the trainer used (read back from one of its stored
GradientBatch events). The explained output is f itself: the logit of class 1
(classification) or the prediction (regression) — positive scores raised it. Every other
model needs its parameters to differentiate, and the service holds none: refused, naming
what to send instead.
"""

from __future__ import annotations

import numpy as np

from headwater.errors import NothingToAttribute
from headwater.producers.capture.projection import Projection
from headwater.query_service.attribution.scoring import AttributionError, TestGradient
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2, query_pb2

PARAMETER_FREE = ("numpy",)  # frameworks whose output gradient is [x, 1]


def raw_features_gradient(store: Store, msg: query_pb2.RawFeatures, run_id: str = ""
                          ) -> tuple[str, TestGradient]:
    """(model id, test gradient) of raw features at a model version (latest if empty) of
    the run `run_id` (any run if empty)."""
    if not msg.model_id:
        raise AttributionError("raw_features.model_id is empty")
    x = _features(msg)
    params = {"m": msg.model_id, "v": msg.model_version, "r": run_id}
    rows = store.query(
        "SELECT version, framework, parameter_count FROM model_versions FINAL "
        "WHERE model_id = {m:String} AND ({v:String} = '' OR version = {v:String}) "
        "AND ({r:String} = '' OR run_id = {r:String}) "
        "ORDER BY step DESC, recorded_at DESC LIMIT 1", params)
    if not rows:
        what = f"version {msg.model_version!r} of " if msg.model_version else ""
        raise NothingToAttribute(f"no {what}model {msg.model_id!r} recorded")
    version, framework, parameter_count = rows[0]
    if framework not in PARAMETER_FREE:
        raise AttributionError(
            f"raw_features works for linear models only (framework numpy): model "
            f"{msg.model_id!r} is {framework}, whose test gradient needs its parameters, and "
            "the service holds no models; record the prediction in the trainer "
            "(record_prediction) or send its test_gradient")
    if x.size + 1 != parameter_count:
        raise AttributionError(f"raw_features has {x.size} features; model {msg.model_id!r} "
                               f"takes {parameter_count - 1}")
    projection = _projection(store, msg.model_id, version)
    phi = np.asarray(projection.project(np.append(x, 1.0)[None, :]), dtype=np.float64)[0]
    return msg.model_id, TestGradient(version, projection.projection_id, phi, "output")


def _features(msg: query_pb2.RawFeatures) -> np.ndarray:
    if len(msg.features) % 4:
        raise AttributionError(f"raw_features.features has {len(msg.features)} bytes; "
                               "float32 values (4 bytes each) expected")
    x = np.frombuffer(msg.features, "<f4").astype(np.float64)
    shape = tuple(int(s) for s in msg.shape) or (x.size,)
    if int(np.prod(shape)) != x.size:
        raise AttributionError(f"raw_features.shape {list(shape)} does not match "
                               f"{x.size} values")
    if len(shape) > 2 or (len(shape) == 2 and shape[0] != 1) or x.size == 0:
        raise AttributionError(f"raw_features must be one row: shape [d] or [1, d]; "
                               f"got {list(shape)}")
    if not np.isfinite(x).all():
        raise AttributionError("raw_features contains NaN or infinity")
    return x


def _projection(store: Store, model_id: str, version: str) -> Projection:
    """The projection of the version's stored gradients, rebuilt from one GradientBatch."""
    rows = store.query(
        "SELECT hex(e.raw) FROM events AS e WHERE e.event_id IN (SELECT event_id FROM "
        "gradients WHERE model_id = {m:String} AND model_version = {v:String} LIMIT 1) "
        "LIMIT 1", {"m": model_id, "v": version})
    if not rows:
        raise AttributionError(f"model {model_id!r} has no stored gradients at version "
                               f"{version!r}: nothing to attribute to")
    event = events_pb2.Event.FromString(bytes.fromhex(rows[0][0]))
    return Projection.from_proto(event.gradient_batch.projection)
