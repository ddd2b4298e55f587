"""Where a bundle comes from: the MLflow calls leave the process's tracking URI as they found it."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("before", [None, "sqlite:////tmp/moat-caller.db"])
def test_tracking_uri_kept_restores_what_the_caller_had(before: str | None) -> None:
    import os

    import mlflow

    from moat.models.bundle_source import tracking_uri_kept

    mlflow.set_tracking_uri(before)
    try:
        with tracking_uri_kept():
            mlflow.set_tracking_uri("sqlite:////tmp/moat-throwaway.db")  # what Lightning's logger does
        assert os.environ.get("MLFLOW_TRACKING_URI") == before
    finally:
        mlflow.set_tracking_uri(None)
