"""The model card written into every bundle."""

from __future__ import annotations

from moat.models.bundle import BundleMeta
from moat.models.feature_spec import FEATURES


def render_card(meta: BundleMeta) -> str:
    m = meta.metrics
    t = meta.thresholds
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(m.items()))
    fams = meta.data_stats.get("train", {}).get("families", {})
    fam_rows = "\n".join(f"| {f} | {d['label']} | {d['accounts']} | {d['events']} |" for f, d in sorted(fams.items()))
    return f"""# Model card: moat-risk {meta.model_version}

## Intended use
Scores each request to an AI API with the calibrated probability that the traffic of its scope
(account, API key, client IP prefix) is a model-extraction attack, and maps it to an action
(allow, throttle, perturb, block). Meant to sit behind a gateway as one signal in an abuse
programme; blocks should be reviewable. Not for judging the content of a single prompt.

## Model
A causal transformer encoder (`transformers` BertModel built from config, no pretrained
weights) over the latest {meta.window} request vectors of a scope ({len(FEATURES)} features plus
{meta.n_tokens} hashed token ids each). Net: {meta.net}. Feature spec v{meta.feature_spec_version}.
Calibration: temperature {meta.calibration.temperature:.3f}.

## Data
Synthetic traffic from `moat generate` (benign personas and extraction families, split by
actor; held-out families appear only in test). Training families:

| family | label | accounts | events |
|---|---|---|---|
{fam_rows}

## Validation metrics (account level, risk = max over the account's requests)
| metric | value |
|---|---|
{rows}

Thresholds chosen on validation benign accounts: throttle >= {t.throttle:.4f}, perturb >= {t.perturb:.4f},
block >= {t.block:.4f} (targets: {meta.targets}).

## Known limits
- Trained only on simulated traffic; real traffic differs. Run in shadow mode (`MOAT_MODE=shadow`)
  first and recalibrate thresholds on your own benign accounts.
- Validation uses the simulator's families; held-out evaluation (`moat evaluate`) measures
  generalisation to families the model did not see, and real attackers will adapt.
- Content is seen only through hashed token ids of the newest prompt (first {meta.n_tokens} words); long
  documents and non-Latin scripts are summarised coarsely.
- Campaign counts use prompt-shape signatures; campaigns with fully diverse prompts across accounts
  are visible only through their per-account behaviour and shared address prefixes.
"""
