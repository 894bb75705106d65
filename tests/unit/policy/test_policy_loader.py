"""Loading security.istio.io YAML: what is accepted, and refusals with file:line."""

from __future__ import annotations

import pytest
from policy_cases import docs, load, policy

from meshlet.config.istio_security import Action, MtlsMode
from meshlet.errors import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return list(info.value.problems)


def test_full_authorization_policy_loads() -> None:
    config = load(
        policy(
            "full",
            """
selector: {matchLabels: {app: httpbin}}
action: DENY
rules:
- from:
  - source:
      principals: ["cluster.local/ns/a/sa/b"]
      notRequestPrincipals: ["*"]
      ipBlocks: ["10.0.0.0/8"]
      notRemoteIpBlocks: ["1.2.3.4"]
  to:
  - operation: {hosts: ["*.x"], notPorts: ["81"], methods: ["GET"], notPaths: ["/h*"]}
  when:
  - {key: "request.auth.claims[a][b]", values: ["v"]}
  - {key: destination.port, notValues: ["9000"]}
""",
        )
    )
    (p,) = config.authorization_policies
    assert (p.ref, p.action, p.selector) == ("foo/full", Action.DENY, (("app", "httpbin"),))
    rule = p.rules[0]
    assert rule.sources[0].not_request_principals == ("*",)
    assert rule.operations[0].not_ports == (81,)
    assert [c.key for c in rule.conditions] == ["request.auth.claims[a][b]", "destination.port"]
    assert p.where == "policies.yaml:1"


def test_defaults_and_empty_spec() -> None:
    (p,) = load(policy("allow-nothing", "{}")).authorization_policies
    assert (p.action, p.rules, p.selector) == (Action.ALLOW, (), None)


def test_peer_and_request_authentication_load() -> None:
    config = load(docs(
        policy("pa", """
selector: {matchLabels: {app: x}}
mtls: {mode: STRICT}
portLevelMtls: {"8080": {mode: PERMISSIVE}}
""", kind="PeerAuthentication", version="v1beta1"),
        policy("ra", """
jwtRules:
- issuer: https://issuer
  jwksUri: https://issuer/keys
  audiences: [a]
  fromHeaders: [{name: X-Token, prefix: "T "}]
  fromParams: [tok]
  outputPayloadToHeader: x-payload
  outputClaimToHeaders: [{header: X-Sub, claim: sub}]
  forwardOriginalToken: true
  timeout: 2s
""", kind="RequestAuthentication"),
    ))  # fmt: skip
    (pa,) = config.peer_authentications
    assert (pa.mode, pa.port_modes) == (MtlsMode.STRICT, ((8080, MtlsMode.PERMISSIVE),))
    (rule,) = config.request_authentications[0].jwt_rules
    assert rule.from_headers == (("x-token", "T "),)
    assert rule.output_claim_to_headers == (("x-sub", "sub"),)
    assert (rule.forward_original_token, rule.timeout_s) == (True, 2.0)


@pytest.mark.parametrize(
    ("spec", "kind", "expected"),
    [
        pytest.param(
            "targetRef: {kind: Gateway, name: g}",
            "AuthorizationPolicy",
            "policies.yaml:5: AuthorizationPolicy foo/p (document 0): spec.targetRef: "
            "unknown field",
            id="targetRef",
        ),
        pytest.param(
            "action: REJECT", "AuthorizationPolicy", "spec.action: must be ALLOW", id="bad-action"
        ),
        pytest.param(
            "action: CUSTOM\nrules: [{}]",
            "AuthorizationPolicy",
            "action CUSTOM needs provider.name",
            id="custom-without-provider",
        ),
        pytest.param(
            "provider: {name: x}\nrules: [{}]",
            "AuthorizationPolicy",
            "provider is only valid with action CUSTOM",
            id="provider-without-custom",
        ),
        pytest.param(
            "rules: [{from: [{source: {}}]}]",
            "AuthorizationPolicy",
            "a source must set at least one field",
            id="empty-source",
        ),
        pytest.param(
            "rules: [{to: [{operation: {paths: ['/a/{*}/b']}}]}]",
            "AuthorizationPolicy",
            "wildcard only as prefix",
            id="path-template",
        ),
        pytest.param(
            "rules: [{to: [{operation: {ports: ['http']}}]}]",
            "AuthorizationPolicy",
            "port must be a number",
            id="named-port",
        ),
        pytest.param(
            "rules: [{when: [{key: request.regex.headers, values: [a]}]}]",
            "AuthorizationPolicy",
            "unsupported condition key",
            id="unknown-key",
        ),
        pytest.param(
            "rules: [{when: [{key: source.ip}]}]",
            "AuthorizationPolicy",
            "a condition needs values or notValues",
            id="condition-without-values",
        ),
        pytest.param(
            "rules: [{when: [{key: source.ip, values: [nope]}]}]",
            "AuthorizationPolicy",
            "not an IP address or CIDR",
            id="bad-cidr",
        ),
        pytest.param(
            "selector: {matchExpressions: []}",
            "AuthorizationPolicy",
            "only selector.matchLabels is supported",
            id="match-expressions",
        ),
        pytest.param(
            "mtls: {mode: STRICTER}",
            "PeerAuthentication",
            "spec.mtls.mode: must be one of",
            id="bad-mode",
        ),
        pytest.param(
            "portLevelMtls: {8080: {mode: STRICT}}",
            "PeerAuthentication",
            "portLevelMtls requires a workload selector",
            id="ports-without-selector",
        ),
        pytest.param(
            "jwtRules: [{issuer: i}]",
            "RequestAuthentication",
            "OpenID discovery (no jwks, no jwksUri) needs an https:// issuer",
            id="no-jwks",
        ),
        pytest.param(
            "jwtRules: [{issuer: i, jwksUri: 'ftp://x'}]",
            "RequestAuthentication",
            "must be an http(s):// or file:// URI",
            id="bad-jwks-uri",
        ),
        pytest.param(
            "jwtRules: [{issuer: i, jwks: '{}', fromCookies: ['a b']}]",
            "RequestAuthentication",
            "fromCookies[0]: not a valid cookie name",
            id="from-cookies",
        ),
    ],
)
def test_unsupported_or_invalid_is_refused(spec: str, kind: str, expected: str) -> None:
    found = problems(policy("p", spec, kind=kind))
    assert any(expected in p for p in found), found


def test_every_problem_of_every_document_is_reported() -> None:
    found = problems(docs(
        policy("a", "rules: [{to: [{operation: {ports: ['x'], paths: ['a*b']}}]}]"),
        policy("b", "action: NOPE"),
        "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: c}\n",
    ))  # fmt: skip
    assert len(found) == 4, found
    assert any("(document 1)" in p and "spec.action" in p for p in found)
    assert any("unsupported security.istio.io/v2" in p for p in found)


def test_duplicate_names_are_refused() -> None:
    found = problems(docs(policy("same", "{}"), policy("same", "{}")))
    assert any("duplicate resource" in p for p in found)


def test_envelope_problems() -> None:
    found = problems("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nbogus: 1\n"
                     "metadata: {name: Bad_Name}\n")  # fmt: skip
    assert any("bogus: unknown field" in p for p in found)
    assert any("metadata.name: required DNS name" in p for p in found)


def test_extension_provider_loads() -> None:
    config = load(
        "apiVersion: meshlet.dev/v1alpha1\nkind: ExtensionProvider\n"
        "metadata: {name: opa, namespace: istio-system}\n"
        "spec:\n  envoyExtAuthzHttp:\n    service: 127.0.0.1\n    port: 9191\n"
        "    timeout: 250ms\n    includeRequestHeadersInCheck: [Authorization]\n"
    )
    (p,) = config.providers
    assert (p.name, p.host, p.port, p.timeout_s, p.fail_open) == (
        "opa",
        "127.0.0.1",
        9191,
        0.25,
        False,
    )
    assert p.include_request_headers == ("authorization",)


def test_dry_run_annotation_is_refused() -> None:
    text = policy("shadow", "action: DENY\nrules: [{}]").replace(
        "namespace: foo}", "namespace: foo, annotations: {istio.io/dry-run: 'true'}}"
    )
    (problem,) = problems(text)
    assert "metadata.annotations.istio.io/dry-run: dry-run is not supported" in problem
