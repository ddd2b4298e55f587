"""A model bundle on disk: model.onnx, meta.json and card.md.

Loading verifies the feature-spec version against this code and the ONNX file's hash against
meta.json, so a bundle never silently runs with features it was not trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from moat.models.feature_spec import FEATURE_SPEC_VERSION, N_FEATURES, N_TOKENS, WINDOW

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default"


class Thresholds(BaseModel):
    """Calibrated risk at or above which each action applies."""

    throttle: float = Field(ge=0, le=1.0001)
    perturb: float = Field(ge=0, le=1.0001)
    block: float = Field(ge=0, le=1.0001)


class Calibration(BaseModel):
    temperature: float = Field(gt=0)
    # Own risk a request needs before a dependent scope (address block, partial key) counts:
    # the thresholds were chosen on risk combined this way, so serving defaults to the same value.
    corroboration: float = Field(default=0.5, ge=0, le=1)


class BundleMeta(BaseModel):
    feature_spec_version: str
    window: int
    n_features: int
    n_tokens: int
    model_version: str
    onnx_sha256: str
    calibration: Calibration
    thresholds: Thresholds
    targets: dict[str, float] = Field(default_factory=dict)
    net: dict[str, Any] = Field(default_factory=dict)
    data_stats: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str = ""
    # Set by `moat calibrate`: the bundle these thresholds were re-chosen from, the operator
    # traffic they were chosen on (file hashes, counts) and the calibration report.
    provenance: dict[str, Any] = Field(default_factory=dict)


class BundleError(ValueError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_meta(path: str | Path) -> BundleMeta:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise BundleError(f"{path}: not a model bundle (no meta.json)")
    return BundleMeta.model_validate_json(meta_path.read_text(encoding="utf-8"))


def load_bundle(path: str | Path) -> tuple[BundleMeta, Path]:
    """Validate a bundle directory and return its metadata and ONNX path."""
    path = Path(path)
    meta = read_meta(path)
    if meta.feature_spec_version != FEATURE_SPEC_VERSION:
        raise BundleError(
            f"{path}: bundle feature-spec version {meta.feature_spec_version!r} does not match this code's "
            f"{FEATURE_SPEC_VERSION!r}; retrain or re-export the bundle (make model)"
        )
    if (meta.window, meta.n_features, meta.n_tokens) != (WINDOW, N_FEATURES, N_TOKENS):
        raise BundleError(f"{path}: bundle input shape (window {meta.window}, features {meta.n_features}, tokens {meta.n_tokens}) does not match the code")
    onnx_path = path / "model.onnx"
    if not onnx_path.is_file():
        raise BundleError(f"{path}: model.onnx is missing")
    digest = sha256_file(onnx_path)
    if digest != meta.onnx_sha256:
        raise BundleError(f"{path}: model.onnx hash {digest[:12]}… does not match meta.json ({meta.onnx_sha256[:12]}…); the bundle is corrupt or was edited")
    return meta, onnx_path


def write_meta(path: Path, meta: BundleMeta) -> None:
    (path / "meta.json").write_text(json.dumps(meta.model_dump(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
