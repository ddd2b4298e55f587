"""Where a bundle comes from: a directory, the BentoML model store, or the MLflow registry.

Serving, training and evaluation all name bundles the same way, so the one parser of
`models:/NAME@ALIAS` and `models:/NAME/VERSION` lives here, in the core. MLflow and BentoML are
imported only when such a URI is given: the serve extra needs neither for a bundle directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from moat.models.bundle import BundleError

BENTO_PREFIX = "bentoml:"
REGISTRY_PREFIX = "models:/"
# The registry's SQLite file lives in the user's data directory, never inside a source tree
# (a run from the repository must leave `git status` clean).
ARTIFACTS_DIR = "mlartifacts"
REGISTERED_MODEL = "moat-risk"
DEFAULT_TRACKING_URI = f"sqlite:///{Path(os.environ.get('MOAT_HOME', Path.home() / '.moat')) / 'mlflow.db'}"


def tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri wins, then MLFLOW_TRACKING_URI, then `$MOAT_HOME/mlflow.db` (~/.moat)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


@contextmanager
def tracking_uri_kept() -> Iterator[None]:
    """Leave the process's MLflow tracking URI as it was found. mlflow.set_tracking_uri (which
    Lightning's logger and MLflow's fluent API call) also writes MLFLOW_TRACKING_URI into the
    process's environment: after a run into a throwaway registry (leave-one-family-out), the
    caller's own MLflow logging went to that deleted database."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets the variable too


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite tracking database. MLflow's
    own default for a database is ./mlruns in the current directory, which puts runs into
    whatever directory the command ran in (a repository: `git status` no longer clean). Other
    tracking stores choose for themselves (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS_DIR).as_uri()


@dataclass(frozen=True)
class RegistryRef:
    name: str
    alias: str | None = None
    version: str | None = None


def parse_registry_uri(uri: str) -> RegistryRef:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION`; a clear error for anything else."""
    ref = uri.removeprefix(REGISTRY_PREFIX)
    if not uri.startswith(REGISTRY_PREFIX) or not ref:
        raise BundleError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        if name and alias:
            return RegistryRef(name, alias=alias)
    elif "/" in ref:
        name, version = ref.split("/", 1)
        if name and version.isdigit():
            return RegistryRef(name, version=version)
    raise BundleError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def registry_version(uri: str, tracking: str | None = None):  # -> mlflow ModelVersion
    """The registry's model version that `uri` names; BundleError (one line) when it has none."""
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError as exc:  # the serve extra has no mlflow
        raise BundleError(f"{uri}: loading from the MLflow registry needs mlflow (pip install 'moat[train]')") from exc
    ref = parse_registry_uri(uri)
    client = MlflowClient(tracking_uri=tracking_uri(tracking))
    try:
        if ref.alias is not None:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, ref.version)
    except MlflowException as exc:
        what = f"alias {ref.alias!r}" if ref.alias is not None else f"version {ref.version}"
        raise BundleError(f"{uri}: the registry at {tracking_uri(tracking)} has no {what} of model {ref.name!r}") from exc


def resolve_registry_uri(uri: str, tracking: str | None = None) -> Path:
    """Download the registry bundle `uri` names and return its directory."""
    import mlflow

    mv = registry_version(uri, tracking)
    with tracking_uri_kept():
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, tracking_uri=tracking_uri(tracking)))


def register_bundle(bundle_dir: Path, tracking: str | None, tags: dict[str, str], experiment: str = "moat-calibrate") -> str | None:
    """Log a bundle directory as a run's artifacts and register it as a new version of
    `moat-risk` (no alias moves: promoting it is the operator's decision). Only when a tracking
    URI is given or MLFLOW_TRACKING_URI is set; returns the new `models:/` URI, or None."""
    uri = tracking or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    from mlflow import MlflowClient

    uri = tracking_uri(uri)
    # The client alone, not MLflow's fluent API: that would set the process's tracking URI and
    # active experiment (environment variables included) under the caller.
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment, artifact_location=artifact_location(uri))
    run = client.create_run(experiment_id, tags={**tags, "mlflow.runName": f"calibrate {bundle_dir.name}"})
    try:
        client.log_artifacts(run.info.run_id, str(bundle_dir), artifact_path="bundle")
    except Exception:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(filter_string=f"name='{REGISTERED_MODEL}'"):
        client.create_registered_model(REGISTERED_MODEL)
    mv = client.create_model_version(REGISTERED_MODEL, source=f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id, tags=tags)
    return f"{REGISTRY_PREFIX}{REGISTERED_MODEL}/{mv.version}"


def resolve_model(spec: str) -> Path:
    """A bundle directory from a directory path, `models:/...` or `bentoml:TAG`."""
    if spec.startswith(REGISTRY_PREFIX):
        return resolve_registry_uri(spec)
    if spec.startswith(BENTO_PREFIX):
        import bentoml

        tag = spec.removeprefix(BENTO_PREFIX)
        try:
            return Path(bentoml.models.get(tag).path)
        except bentoml.exceptions.NotFound as exc:
            raise BundleError(f"{spec}: no such model in the BentoML model store") from exc
    path = Path(spec)
    if not path.is_dir():
        raise BundleError(f"{spec}: no such bundle directory")
    return path


def save_to_bentoml(bundle_dir: Path, name: str = "moat-risk") -> str:
    """Copy a bundle into the BentoML model store; returns the tag to serve it by."""
    import bentoml

    from moat.models.bundle import load_bundle

    meta, _ = load_bundle(bundle_dir)
    with bentoml.models.create(name, metadata={"model_version": meta.model_version}) as model:
        for f in ("model.onnx", "meta.json", "card.md"):
            shutil.copy2(bundle_dir / f, Path(model.path) / f)
    return str(model.tag)
