"""Where a bundle comes from: a directory, the BentoML model store, or the MLflow registry."""

from __future__ import annotations

import shutil
from pathlib import Path

from models.bundle import BundleError

BENTO_PREFIX = "bentoml:"
REGISTRY_PREFIX = "models:/"


def resolve_model(spec: str) -> Path:
    if spec.startswith(REGISTRY_PREFIX):
        try:
            from training.registry import resolve_registry_uri
        except ImportError as exc:  # the serve extra has no mlflow
            raise BundleError(f"MOAT_MODEL={spec}: loading from the MLflow registry needs mlflow (pip install 'moat[train]')") from exc
        return resolve_registry_uri(spec)
    if spec.startswith(BENTO_PREFIX):
        import bentoml

        tag = spec.removeprefix(BENTO_PREFIX)
        try:
            return Path(bentoml.models.get(tag).path)
        except bentoml.exceptions.NotFound as exc:
            raise BundleError(f"MOAT_MODEL={spec}: no such model in the BentoML model store") from exc
    path = Path(spec)
    if not path.is_dir():
        raise BundleError(f"MOAT_MODEL={spec}: no such bundle directory")
    return path


def save_to_bentoml(bundle_dir: Path, name: str = "moat-risk") -> str:
    """Copy a bundle into the BentoML model store; returns the tag to serve it by."""
    import bentoml

    from models.bundle import load_bundle

    meta, _ = load_bundle(bundle_dir)
    with bentoml.models.create(name, metadata={"model_version": meta.model_version}) as model:
        for f in ("model.onnx", "meta.json", "card.md"):
            shutil.copy2(bundle_dir / f, Path(model.path) / f)
    return str(model.tag)
