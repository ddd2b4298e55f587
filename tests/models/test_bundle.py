"""Loading a bundle checks the feature-spec version, the input shape and the ONNX hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from moat.models.bundle import DEFAULT_BUNDLE, BundleError, load_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, dst)
    return dst


def edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_shipped_bundle_loads() -> None:
    meta, onnx = load_bundle(DEFAULT_BUNDLE)
    assert onnx.is_file() and meta.thresholds.throttle <= meta.thresholds.perturb <= meta.thresholds.block
    assert (DEFAULT_BUNDLE / "card.md").read_text().startswith("# Model card")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"feature_spec_version": "0"}, "feature-spec version '0' does not match"),
        ({"window": 3}, "input shape"),
        ({"onnx_sha256": "0" * 64}, "hash"),
    ],
)
def test_mismatch_fails_clearly(bundle: Path, change: dict, message: str) -> None:
    edit_meta(bundle, **change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_edited_onnx_fails(bundle: Path) -> None:
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="corrupt or was edited"):
        load_bundle(bundle)


@pytest.mark.parametrize("missing, message", [("meta.json", "not a model bundle"), ("model.onnx", "model.onnx is missing")])
def test_missing_files(bundle: Path, missing: str, message: str) -> None:
    (bundle / missing).unlink()
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)
