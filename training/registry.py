"""MLflow registry: register each trained bundle as a version of `moat-risk` and move the
`champion` alias only when the new version beats the current champion on the same
validation traces."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "moat-risk"
ALIAS = "champion"
log = logging.getLogger(__name__)




@dataclass
class Promotion:
    version: str
    promoted: bool
    reason: str


def register_and_promote(run_id: str, bundle_artifact: str, new_score: float, score_champion: Callable[[Path], float | None], uri: str) -> Promotion:
    """`score_champion(bundle_dir)` evaluates the current champion on the validation traces the
    new model was selected on; None means it cannot be compared (e.g. older feature spec)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_registered_model(MODEL_NAME)
    except MlflowException:
        client.create_registered_model(MODEL_NAME, description="Moat sequence risk model bundles (ONNX + meta.json + card.md)")
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{bundle_artifact}"
    mv = client.create_model_version(MODEL_NAME, source=source, run_id=run_id, tags={"account_auroc": f"{new_score:.5f}"})
    try:
        champ = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    except MlflowException:
        champ = None
    if champ is None:
        client.set_registered_model_alias(MODEL_NAME, ALIAS, mv.version)
        return Promotion(mv.version, True, "no champion yet")
    mlflow.set_tracking_uri(uri)
    champ_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=champ.source))
    champ_score = score_champion(champ_dir)
    if champ_score is None:
        client.set_registered_model_alias(MODEL_NAME, ALIAS, mv.version)
        return Promotion(mv.version, True, f"champion v{champ.version} cannot be scored with this feature spec")
    if new_score > champ_score:
        client.set_registered_model_alias(MODEL_NAME, ALIAS, mv.version)
        return Promotion(mv.version, True, f"validation AUROC {new_score:.4f} beats champion v{champ.version} ({champ_score:.4f})")
    return Promotion(mv.version, False, f"not promoted: validation AUROC {new_score:.4f} does not beat champion v{champ.version} ({champ_score:.4f})")
