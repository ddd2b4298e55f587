"""MLflow registry: register each trained bundle as a version of `moat-risk` and move the
`champion` alias only when the new version beats the current champion on the same
validation traces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moat.models.bundle_source import REGISTERED_MODEL

MODEL_NAME = REGISTERED_MODEL
ALIAS = "champion"
@dataclass
class Promotion:
    version: str
    promoted: bool
    reason: str  # why the champion alias moved or stayed

    @property
    def summary(self) -> str:
        outcome = "promoted to champion" if self.promoted else "not promoted"
        return f"registered {MODEL_NAME} v{self.version}; {outcome} ({self.reason})"


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
        return Promotion(mv.version, True, "first version" if str(mv.version) == "1" else "no version held the alias")
    mlflow.set_tracking_uri(uri)
    champ_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=champ.source))
    champ_score = score_champion(champ_dir)
    if champ_score is None:
        client.set_registered_model_alias(MODEL_NAME, ALIAS, mv.version)
        return Promotion(mv.version, True, f"champion v{champ.version} cannot be scored with this feature spec")
    if new_score > champ_score:
        client.set_registered_model_alias(MODEL_NAME, ALIAS, mv.version)
        return Promotion(mv.version, True, f"validation account AUROC {new_score:.4f} beats champion v{champ.version}'s {champ_score:.4f}")
    return Promotion(mv.version, False, f"validation account AUROC {new_score:.4f} does not beat champion v{champ.version}'s {champ_score:.4f}")
