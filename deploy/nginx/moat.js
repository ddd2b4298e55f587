// Moat in front of an OpenAI-compatible API, for nginx with njs (Debian: libnginx-mod-http-js).
//
// auth_request never sees the request body, and the body is what Moat scores, so this js_content
// handler sends method, path, the identifying headers and the body to Moat's ext_authz endpoint
// (the same contract Envoy uses, served by `moat proxy`) and acts on the answer:
//   200 (allow, perturb) -> the request goes on to @upstream, with x-moat-action/-risk/-reasons
//   429 (throttle)       -> relayed to the client with Retry-After and the OpenAI error body
//   403 (block)          -> relayed likewise
// Fail open: if Moat cannot be reached within js_fetch_timeout, or answers 5xx, the request goes on.

const PASS_HEADERS = ['authorization', 'user-agent', 'content-type', 'x-request-id'];

async function guard(r) {
    const headers = {};
    // (njs 0.7, Debian 12's, has no for...of)
    PASS_HEADERS.forEach(function (name) {
        const value = r.headersIn[name];
        if (value !== undefined) {
            headers[name] = value;
        }
    });
    // Append the peer, as Envoy does: Moat trusts the last X-Forwarded-For entry.
    const forwarded = r.headersIn['X-Forwarded-For'];
    headers['x-forwarded-for'] = forwarded ? forwarded + ', ' + r.remoteAddress : r.remoteAddress;
    const body = r.requestText || '';
    let reply;
    try {
        // request_uri as the client sent it (still percent-encoded): the decoded r.uri can carry
        // CR LF into the request line, and with it headers of the client's choosing.
        reply = await ngx.fetch(r.variables.moat_url + '/ext_authz' + r.variables.request_uri, {method: r.method, headers: headers, body: body});
    } catch (e) {
        r.warn('moat unreachable, failing open: ' + e.message);
        return proceed(r, 'allow', '', 'moat_unavailable');
    }
    // 429 throttle, 403 block, 400 a body that says JSON and is not (unreadable, so unscored).
    if (reply.status === 429 || reply.status === 403 || reply.status === 400) {
        // Read the body before touching headersOut: njs 0.7.9 (Debian 12) crashes the worker when
        // headersOut is set and the handler then awaits.
        const text = await reply.text();
        const retryAfter = reply.headers.get('Retry-After');
        if (retryAfter) {
            r.headersOut['Retry-After'] = retryAfter;
        }
        r.headersOut['Content-Type'] = 'application/json';
        r.return(reply.status, text);
        return;
    }
    if (reply.status !== 200) {
        r.warn('moat answered ' + reply.status + ', failing open');
        return proceed(r, 'allow', '', 'moat_error');
    }
    proceed(r, reply.headers.get('x-moat-action') || 'allow', reply.headers.get('x-moat-risk') || '', reply.headers.get('x-moat-reasons') || '');
}

function proceed(r, action, risk, reasons) {
    r.variables.moat_action = action;
    r.variables.moat_risk = risk;
    r.variables.moat_reasons = reasons;
    r.internalRedirect('@upstream');
}

export default {guard};
