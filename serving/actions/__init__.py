"""Response actions: what `throttle`, `perturb` and `block` do to a request and its answer.
Numpy-free and network-free, so every gateway adapter (proxy, ext_authz, LiteLLM) calls the
same code."""

from moat.serving.actions.logprobs import ResponsePerturber, SSETransformer, request_seed
from moat.serving.actions.registry import ACTIONS, Action, get_action, reply_for
from moat.serving.actions.replies import Reply, invalid_request, openai_error
from moat.serving.actions.request import LOGPROBS, InvalidRequest, generates, perturb_request
from moat.serving.actions.settings import ActionSettings, PerturbSettings, ThrottleSettings
from moat.serving.actions.watermark import TextWatermarker, WatermarkSettings, detect

__all__ = [
    "ACTIONS", "LOGPROBS", "Action", "ActionSettings", "InvalidRequest", "PerturbSettings", "Reply", "ResponsePerturber", "SSETransformer",
    "TextWatermarker", "ThrottleSettings", "WatermarkSettings", "detect", "generates", "get_action", "invalid_request", "openai_error", "perturb_request", "reply_for",
    "request_seed",
]
