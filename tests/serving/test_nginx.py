"""deploy/nginx through a real nginx (Debian's nginx + libnginx-mod-http-js): the openai SDK ->
nginx running moat.js -> Moat's ext_authz endpoint (uvicorn thread, thresholds forcing each
action) -> the fake upstream. CI installs both packages; if either is missing these fail."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import SecretStr

from moat.serving.actions.settings import ActionSettings, ThrottleSettings
from moat.serving.proxy import IdentityResolver, ProxySettings, build_proxy_app
from tests.conftest import ROOT
from tests.serving.fake_upstream import LOGPROBS, THRESHOLDS, TOKENS, Seen, forced_scorer, free_port, serve_app

DEPLOY = ROOT / "deploy" / "nginx"
JS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")  # Debian's libnginx-mod-http-js
ACTIONS = ActionSettings(throttle=ThrottleSettings(retry_after_s=11))
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "Say hello"}], "logprobs": True, "top_logprobs": 2}


def site_conf(port: int, upstream: str, moat: str) -> str:
    """deploy/nginx/moat.conf with this test's addresses; each placeholder must be there once."""
    text = (DEPLOY / "moat.conf").read_text()
    for old, new in [
        ("js_path /etc/nginx/njs/;", f"js_path {DEPLOY}/;"),
        ("server 127.0.0.1:8000;", f"server {upstream.removeprefix('http://')};"),
        ("set $moat_url http://127.0.0.1:8080;", f"set $moat_url {moat};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
    ]:
        assert text.count(old) == 1, f"deploy/nginx/moat.conf no longer holds {old!r} once"
        text = text.replace(old, new)
    return text


def main_conf(tmp: Path, site: Path) -> str:
    # One foreground process as the test's user, everything it writes under tmp.
    return f"""load_module {JS_MODULE};
daemon off;
master_process off;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {site};
}}
"""


def start_nginx(tmp: Path, upstream: str, moat: str) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.fail("nginx is not installed (apt-get install nginx libnginx-mod-http-js; .ci/run does this)")
    if not JS_MODULE.exists():
        pytest.fail(f"{JS_MODULE} is missing (apt-get install libnginx-mod-http-js; .ci/run does this)")
    port = free_port()
    site = tmp / "moat.conf"
    site.write_text(site_conf(port, upstream, moat))
    (tmp / "nginx.conf").write_text(main_conf(tmp, site))
    test = subprocess.run([binary, "-t", "-p", str(tmp), "-c", str(tmp / "nginx.conf")], capture_output=True, text=True)
    assert test.returncode == 0, f"nginx -t rejected the config: {test.stderr}"
    proc = subprocess.Popen([binary, "-p", str(tmp), "-c", str(tmp / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"nginx exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("nginx did not start listening")


@pytest.fixture(scope="module")
def moats() -> Iterator[dict[str, str]]:
    servers = {a: serve_app(build_proxy_app(ProxySettings(secret=SecretStr("k")), forced_scorer(a), ACTIONS)) for a in THRESHOLDS}
    yield {a: s.__enter__() for a, s in servers.items()}
    for s in servers.values():
        s.__exit__(None, None, None)


@pytest.fixture
def nginx_for(tmp_path: Path, upstream: tuple[str, Seen], moats: dict[str, str]) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(action: str | None, moat: str | None = None) -> str:
        d = tmp_path / f"nginx{len(procs)}"
        d.mkdir()
        proc, url = start_nginx(d, upstream[0], moat or moats[action or "allow"])
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-nginx-test", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("action", ["allow", "perturb"])
def test_allowed_requests_reach_the_upstream_with_the_decision(nginx_for, upstream: tuple[str, Seen], action: str, stream: bool) -> None:
    client = sdk(nginx_for(action))
    if stream:
        chunks = list(client.chat.completions.create(stream=True, extra_headers={"x-moat-action": "forged"}, **CHAT))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        logprobs = [e.logprob for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    else:
        r = client.chat.completions.create(extra_headers={"x-moat-action": "forged"}, **CHAT)
        text, logprobs = r.choices[0].message.content, [e.logprob for e in r.choices[0].logprobs.content]
    assert text == "".join(TOKENS) and logprobs == LOGPROBS
    sent = upstream[1].headers[-1]
    assert sent["x-moat-action"] == action  # nginx's value, not the one the client sent
    assert 0.0 <= float(sent["x-moat-risk"]) <= 1.0
    assert upstream[1].bodies[-1] == {**CHAT, **({"stream": True} if stream else {})}  # the body njs read still went upstream


@pytest.mark.parametrize(
    "action, error, status",
    [("throttle", openai.RateLimitError, 429), ("block", openai.PermissionDeniedError, 403)],
)
@pytest.mark.parametrize("stream", [False, True])
def test_denials_come_back_through_nginx(nginx_for, upstream: tuple[str, Seen], action: str, error: type, status: int, stream: bool) -> None:
    before = len(upstream[1].bodies)
    with pytest.raises(error) as info:
        sdk(nginx_for(action)).chat.completions.create(stream=stream, **CHAT)
    assert info.value.status_code == status
    assert info.value.body["code"] == ("rate_limit_exceeded" if action == "throttle" else "access_denied")
    assert info.value.response.headers.get("retry-after") == ("11" if action == "throttle" else None)
    assert len(upstream[1].bodies) == before


def test_moat_unreachable_fails_open(nginx_for) -> None:
    r = sdk(nginx_for(None, moat="http://127.0.0.1:9")).chat.completions.create(**CHAT)
    assert r.choices[0].message.content == "".join(TOKENS)


def test_an_encoded_line_break_in_the_path_cannot_name_the_account(nginx_for, upstream: tuple[str, Seen]) -> None:
    """njs sent the decoded path to Moat: `%0d%0a` became a line break in the request line, and
    the headers after it (an `Authorization` of the client's choosing) came before the real
    ones. The block Moat must score the real key and answer 403, whatever the path says."""
    from moat.models.events import Event
    from moat.serving.scorer import Scorer

    seen: list[Event] = []

    class Recording:
        def __init__(self, inner: Scorer) -> None:
            self.inner = inner
            self.model_version = inner.model_version

        def score_each(self, events: list[Event]):  # noqa: ANN201
            seen.extend(events)
            return self.inner.score_each(events)

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self.inner, name)

    with serve_app(build_proxy_app(ProxySettings(secret=SecretStr("k")), Recording(forced_scorer("block")), ACTIONS)) as moat:  # type: ignore[arg-type]
        url = nginx_for(None, moat)
        path = "/v1/chat/completions%20HTTP/1.1%0d%0aAuthorization:%20Bearer%20injected%0d%0aX-Pad:%20x"
        httpx.post(url + path, json=CHAT, headers={"authorization": "Bearer sk-REAL"}, timeout=10)
        plain = httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-REAL"}, timeout=10)
    real = IdentityResolver(ProxySettings(secret=SecretStr("k"))).key_id("sk-REAL")
    assert plain.status_code == 403 and seen[-1].account_id == real, "the plain request is scored as the real key"
    assert all(e.account_id == real for e in seen), [e.account_id for e in seen]


def test_a_body_that_says_json_and_is_not_is_refused_through_nginx(nginx_for, upstream: tuple[str, Seen]) -> None:
    """Moat answers it 400 (it cannot be scored); njs failed open on any status but 403 and 429."""
    seen = len(upstream[1].bodies)
    r = httpx.post(nginx_for("allow") + "/v1/chat/completions", content=b'{"model": "m", "messages": []} trailing', headers={"content-type": "application/json", "authorization": "Bearer sk-x"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert len(upstream[1].bodies) == seen
