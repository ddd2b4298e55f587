"""Leave-one-family-out: for each attack family, train a quick model without it and test on
benign traffic plus that family, for Moat and for the baselines."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from moat.evals.cost import CostModel
from moat.evals.evaluate import evaluate
from moat.models.traces import TraceWriter, iter_raw
from moat.training.config import TrainConfig
from moat.training.datamodule import TraceDataModule


def _filter(src: Path, dst: Path, keep) -> int:
    n = 0
    with TraceWriter(dst) as w:
        for ev in iter_raw(src):
            if keep(ev):
                w.write(ev)
                n += 1
    return n


def leave_one_family_out(data_dir: Path, families: list[str], baselines: list[str], cost: CostModel, cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    from moat.training.trainer import train

    table: dict[str, Any] = {}
    for fam in tqdm(families, desc="leave-one-family-out", disable=not progress):
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            for split in ("train", "val"):
                _filter(TraceDataModule.trace_path(data_dir, split), tmp / f"{split}.jsonl", lambda e, f=fam: e.get("family") != f)
            n_test = _filter(TraceDataModule.trace_path(data_dir, "test"), tmp / "test.jsonl", lambda e, f=fam: e.get("family") == f or e.get("label") == 0)
            if n_test == 0:
                continue
            # A throwaway registry: these models are measurements, not candidates for champion.
            result = train(tmp, tmp / "bundle", cfg, uri=f"sqlite:///{tmp / 'mlflow.db'}", progress=False)
            metrics, *_ = evaluate(tmp / "test.jsonl", result.bundle, baselines, tmp / "train.jsonl", cost, progress=False)
            if fam not in metrics["methods"]["moat"]["per_family"]:
                continue
            table[fam] = {name: {k: m["per_family"][fam][k] for k in ("auroc", "tpr_at_1pct_fpr", "acted_on")} for name, m in metrics["methods"].items()}
    return table


def load_config(path: Path | None) -> TrainConfig:
    return TrainConfig.load(path, quick=True)
