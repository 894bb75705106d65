"""Request x policy conformance table, written from Istio's AuthorizationPolicy
and PeerAuthentication reference and tasks (explicit deny, TCP traffic, JWT,
ingress, mesh-wide policies). Each case states the decision Istio documents;
every case is also checked against the plain reference evaluator.
"""

from __future__ import annotations

from typing import Any

import pytest
from policy_cases import HTTPBIN, compile_text, docs, policy, request

from meshlet.config.istio_security import MtlsMode
from meshlet.policy.reference import reference_evaluate
from meshlet.policy.scope import Workload

A, D = "ALLOW", "DENY"

# --- the policies the cases use (namespace foo unless said otherwise) --------
DENY_GET = policy(
    "deny-get",
    """
selector: {matchLabels: {app: httpbin}}
action: DENY
rules: [{to: [{operation: {methods: ["GET"]}}]}]
""",
)
ALLOW_SLEEP = policy(
    "allow-sleep",
    """
action: ALLOW
rules: [{from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]}]
""",
)
ALLOW_SLEEP_SPIFFE = policy(
    "allow-sleep-spiffe",
    """
rules: [{from: [{source: {principals: ["spiffe://cluster.local/ns/foo/sa/sleep"]}}]}]
""",
)
ALLOW_NOTHING = policy("allow-nothing", "{}")
ALLOW_ALL = policy("allow-all", "rules: [{}]")
DENY_ALL = policy("deny-all", "action: DENY\nrules: [{}]")
DENY_NO_RULES = policy("deny-none", "action: DENY")
ALLOW_GET_HEADERS = policy(
    "allow-get",
    """
rules:
- to: [{operation: {methods: ["GET"], paths: ["/headers", "/ip"]}}]
""",
)
DENY_NOT_FOO_NS = policy(
    "deny-other-ns",
    """
action: DENY
rules: [{from: [{source: {notNamespaces: ["foo"]}}]}]
""",
)
DENY_PATH_PREFIX = policy(
    "deny-admin",
    """
action: DENY
rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
""",
)
DENY_PATH_SUFFIX = policy(
    "deny-secret",
    """
action: DENY
rules: [{to: [{operation: {paths: ["*.secret"]}}]}]
""",
)
ALLOW_NOT_METHODS = policy(
    "allow-not-delete",
    """
rules: [{to: [{operation: {notMethods: ["DELETE", "PUT"]}}]}]
""",
)
ALLOW_IP = policy(
    "allow-ip",
    """
rules: [{from: [{source: {ipBlocks: ["10.0.0.0/24", "192.168.1.7"]}}]}]
""",
)
DENY_NOT_IP = policy(
    "deny-not-ip",
    """
action: DENY
rules: [{from: [{source: {notIpBlocks: ["10.0.0.0/8"]}}]}]
""",
)
ALLOW_REMOTE_IP = policy(
    "allow-remote",
    """
rules: [{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]
""",
)
ALLOW_PORT = policy(
    "allow-port",
    """
rules: [{to: [{operation: {ports: ["8000"]}}]}]
""",
)
DENY_NOT_PORT = policy(
    "deny-not-port",
    """
action: DENY
rules: [{to: [{operation: {notPorts: ["8000", "9000"]}}]}]
""",
)
ALLOW_HOST = policy(
    "allow-host",
    """
rules: [{to: [{operation: {hosts: ["httpbin.foo", "*.example.com"]}}]}]
""",
)
DENY_HOST_ANY_PORT = policy(
    "deny-host-port",
    """
action: DENY
rules: [{to: [{operation: {hosts: ["httpbin.foo:*"]}}]}]
""",
)
DENY_NOT_HOST = policy(
    "deny-not-host",
    """
action: DENY
rules: [{to: [{operation: {notHosts: ["httpbin.foo"]}}]}]
""",
)
ALLOW_ANY_PRINCIPAL = policy(
    "allow-mtls",
    """
rules: [{from: [{source: {principals: ["*"]}}]}]
""",
)
DENY_NO_PRINCIPAL = policy(
    "deny-plaintext",
    """
action: DENY
rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
""",
)
ALLOW_PRINCIPAL_SUFFIX = policy(
    "allow-sa-suffix",
    """
rules: [{from: [{source: {principals: ["*/sa/sleep"]}}]}]
""",
)
ALLOW_NAMESPACE_PREFIX = policy(
    "allow-ns-prefix",
    """
rules: [{from: [{source: {namespaces: ["fo*"]}}]}]
""",
)
REQUIRE_JWT = policy(
    "require-jwt",
    """
rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
""",
)
DENY_NO_JWT = policy(
    "deny-no-jwt",
    """
action: DENY
rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]
""",
)
ALLOW_ISSUER = policy(
    "allow-issuer",
    """
rules: [{from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]}]
""",
)
ALLOW_GROUP_CLAIM = policy(
    "allow-group",
    """
rules:
- when:
  - key: request.auth.claims[groups]
    values: ["admins"]
""",
)
ALLOW_NESTED_CLAIM = policy(
    "allow-nested",
    """
rules:
- when:
  - key: request.auth.claims[realm][role]
    values: ["model-*"]
""",
)
DENY_AUDIENCE = policy(
    "deny-aud",
    """
action: DENY
rules:
- when:
  - key: request.auth.audiences
    notValues: ["models"]
  from: [{source: {requestPrincipals: ["*"]}}]
""",
)
ALLOW_PRESENTER = policy(
    "allow-azp",
    """
rules:
- when: [{key: request.auth.presenter, values: ["frontend"]}]
""",
)
ALLOW_HEADER = policy(
    "allow-header",
    """
rules:
- when: [{key: "request.headers[X-Tenant]", values: ["acme", "beta-*"]}]
""",
)
DENY_HEADER_PRESENT = policy(
    "deny-debug",
    """
action: DENY
rules:
- when: [{key: "request.headers[x-debug]", values: ["*"]}]
""",
)
ALLOW_NOT_HEADER = policy(
    "allow-not-header",
    """
rules:
- when: [{key: "request.headers[x-env]", notValues: ["prod"]}]
""",
)
ALLOW_SOURCE_IP_WHEN = policy(
    "allow-when-ip",
    """
rules:
- when: [{key: source.ip, values: ["10.0.0.0/16"], notValues: ["10.0.0.66"]}]
""",
)
ALLOW_DEST_PORT_WHEN = policy(
    "allow-when-port",
    """
rules:
- when: [{key: destination.port, values: ["8000"]}]
""",
)
ALLOW_SNI = policy(
    "allow-sni",
    """
rules:
- when: [{key: connection.sni, values: ["*.svc.cluster.local"]}]
""",
)
ALLOW_SOURCE_NS_WHEN = policy(
    "allow-when-ns",
    """
rules:
- when: [{key: source.namespace, values: ["foo"]}]
""",
)
ALLOW_DEST_IP_WHEN = policy(
    "allow-when-dest-ip",
    """
rules:
- when: [{key: destination.ip, values: ["10.0.0.9"]}]
""",
)
ALLOW_FROM_AND_TO = policy(
    "allow-and",
    """
rules:
- from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
  to: [{operation: {methods: ["POST"], paths: ["/v1/models/*"]}}]
""",
)
ALLOW_TWO_RULES = policy(
    "allow-or",
    """
rules:
- to: [{operation: {methods: ["POST"]}}]
- from: [{source: {namespaces: ["bar"]}}]
""",
)
ALLOW_TWO_SOURCES = policy(
    "allow-or-sources",
    """
rules:
- from:
  - source: {namespaces: ["bar"]}
  - source: {principals: ["cluster.local/ns/foo/sa/sleep"]}
""",
)
ALLOW_AND_FIELDS = policy(
    "allow-and-fields",
    """
rules:
- from: [{source: {namespaces: ["foo"], ipBlocks: ["10.1.0.0/16"]}}]
""",
)
AUDIT_POST = policy(
    "audit-post", "action: AUDIT\nrules: [{to: [{operation: {methods: ['POST']}}]}]"
)
ROOT_DENY_DELETE = policy(
    "root-deny-delete",
    """
action: DENY
rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
""",
    namespace="istio-system",
)
ROOT_ALLOW_NOTHING = policy("root-allow-nothing", "{}", namespace="istio-system")
OTHER_NS_DENY_ALL = policy("bar-deny-all", "action: DENY\nrules: [{}]", namespace="bar")
SELECTOR_OTHER = policy(
    "deny-other-app",
    """
selector: {matchLabels: {app: ratings}}
action: DENY
rules: [{}]
""",
)
SELECTOR_TWO_LABELS = policy(
    "deny-v1",
    """
selector: {matchLabels: {app: httpbin, version: v1}}
action: DENY
rules: [{to: [{operation: {paths: ["/v1-only"]}}]}]
""",
)
ROOT_SELECTOR = policy(
    "root-httpbin-deny",
    """
selector: {matchLabels: {app: httpbin}}
action: DENY
rules: [{to: [{operation: {paths: ["/root-blocked"]}}]}]
""",
    namespace="istio-system",
)
TCP_DENY_METHOD_PORT = policy(
    "tcp-deny",
    """
action: DENY
rules: [{to: [{operation: {methods: ["GET"], ports: ["9000"]}}]}]
""",
)
TCP_ALLOW_METHOD = policy(
    "tcp-allow-method",
    """
rules: [{to: [{operation: {methods: ["GET"], ports: ["9000"]}}]}]
""",
)
TCP_ALLOW_PORT = policy(
    "tcp-allow-port",
    """
rules: [{to: [{operation: {ports: ["9000", "9001"]}}]}]
""",
)
V1BETA1_DENY = policy(
    "beta-deny",
    """
action: DENY
rules: [{to: [{operation: {paths: ["/beta"]}}]}]
""",
    version="v1beta1",
)

JWT = {
    "request_principal": "https://issuer.example/alice",
    "audiences": ("models",),
    "presenter": "frontend",
    "claims": {
        "iss": "https://issuer.example",
        "sub": "alice",
        "groups": ["users", "admins"],
        "realm": {"role": "model-reader"},
    },
}

Case = tuple[str, tuple[str, ...], dict[str, Any], str, str | None, int | None, bool]


def case(
    id_: str,
    policies: tuple[str, ...],
    req: dict[str, Any],
    action: str,
    policy_ref: str | None = None,
    rule: int | None = None,
    audit: bool = False,
) -> Any:
    return pytest.param(policies, req, action, policy_ref, rule, audit, id=id_)


CASES = [
    # no policies and the two canonical ones
    case("no-policy-allows", (), {}, A),
    case("no-policy-allows-plaintext", (), {"source_principal": None}, A),
    case("allow-nothing-denies", (ALLOW_NOTHING,), {}, D),
    case("allow-nothing-denies-post", (ALLOW_NOTHING,), {"method": "POST"}, D),
    case("allow-all-allows", (ALLOW_ALL,), {}, A, "foo/allow-all", 0),
    case(
        "allow-all-allows-plaintext",
        (ALLOW_ALL,),
        {"source_principal": None},
        A,
        "foo/allow-all",
        0,
    ),
    case("allow-all-plus-allow-nothing", (ALLOW_ALL, ALLOW_NOTHING), {}, A, "foo/allow-all", 0),
    case("deny-all-denies", (DENY_ALL,), {}, D, "foo/deny-all", 0),
    case("deny-all-beats-allow-all", (DENY_ALL, ALLOW_ALL), {}, D, "foo/deny-all", 0),
    case("deny-no-rules-matches-nothing", (DENY_NO_RULES,), {}, A),
    case("deny-no-rules-with-allow-nothing", (DENY_NO_RULES, ALLOW_NOTHING), {}, D),
    # DENY overrides ALLOW
    case("deny-get-denies-get", (DENY_GET,), {}, D, "foo/deny-get", 0),
    case("deny-get-allows-post", (DENY_GET,), {"method": "POST"}, A),
    case("deny-get-overrides-allow-sleep", (DENY_GET, ALLOW_SLEEP), {}, D, "foo/deny-get", 0),
    case(
        "allow-sleep-when-deny-misses",
        (DENY_GET, ALLOW_SLEEP),
        {"method": "POST"},
        A,
        "foo/allow-sleep",
        0,
    ),
    case("deny-get-method-is-case-sensitive", (DENY_GET,), {"method": "get"}, A),
    case("deny-get-other-workload-unaffected", (DENY_GET,), {"_workload": "ratings"}, A),
    # principals
    case("allow-sleep-allows-sleep", (ALLOW_SLEEP,), {}, A, "foo/allow-sleep", 0),
    case(
        "allow-sleep-denies-other-sa",
        (ALLOW_SLEEP,),
        {"source_principal": "cluster.local/ns/foo/sa/other"},
        D,
    ),
    case("allow-sleep-denies-plaintext", (ALLOW_SLEEP,), {"source_principal": None}, D),
    case(
        "policy-principal-with-spiffe-scheme",
        (ALLOW_SLEEP_SPIFFE,),
        {},
        A,
        "foo/allow-sleep-spiffe",
        0,
    ),
    case("any-principal-allows-mtls", (ALLOW_ANY_PRINCIPAL,), {}, A, "foo/allow-mtls", 0),
    case("any-principal-denies-plaintext", (ALLOW_ANY_PRINCIPAL,), {"source_principal": None}, D),
    case(
        "not-principals-star-denies-plaintext",
        (DENY_NO_PRINCIPAL,),
        {"source_principal": None},
        D,
        "foo/deny-plaintext",
        0,
    ),
    case("not-principals-star-allows-mtls", (DENY_NO_PRINCIPAL,), {}, A),
    case(
        "principal-suffix-matches",
        (ALLOW_PRINCIPAL_SUFFIX,),
        {"source_principal": "td.example/ns/bar/sa/sleep"},
        A,
        "foo/allow-sa-suffix",
        0,
    ),
    case(
        "principal-suffix-misses",
        (ALLOW_PRINCIPAL_SUFFIX,),
        {"source_principal": "td.example/ns/bar/sa/sleeper"},
        D,
    ),
    # namespaces
    case(
        "not-namespaces-denies-other-ns",
        (DENY_NOT_FOO_NS,),
        {"source_principal": "cluster.local/ns/bar/sa/x"},
        D,
        "foo/deny-other-ns",
        0,
    ),
    case("not-namespaces-allows-same-ns", (DENY_NOT_FOO_NS,), {}, A),
    case(
        "not-namespaces-denies-plaintext",
        (DENY_NOT_FOO_NS,),
        {"source_principal": None},
        D,
        "foo/deny-other-ns",
        0,
    ),
    case(
        "namespace-prefix-matches",
        (ALLOW_NAMESPACE_PREFIX,),
        {"source_principal": "cluster.local/ns/football/sa/x"},
        A,
        "foo/allow-ns-prefix",
        0,
    ),
    case(
        "namespace-prefix-misses",
        (ALLOW_NAMESPACE_PREFIX,),
        {"source_principal": "cluster.local/ns/bar/sa/x"},
        D,
    ),
    case("namespace-needs-mtls", (ALLOW_NAMESPACE_PREFIX,), {"source_principal": None}, D),
    # operations: paths, methods, hosts, ports
    case("allow-get-headers", (ALLOW_GET_HEADERS,), {}, A, "foo/allow-get", 0),
    case("allow-get-ip", (ALLOW_GET_HEADERS,), {"path": "/ip"}, A, "foo/allow-get", 0),
    case("allow-get-wrong-path", (ALLOW_GET_HEADERS,), {"path": "/status"}, D),
    case("allow-get-wrong-method", (ALLOW_GET_HEADERS,), {"method": "POST"}, D),
    case("allow-get-path-is-exact", (ALLOW_GET_HEADERS,), {"path": "/headers/x"}, D),
    case(
        "path-prefix-denies", (DENY_PATH_PREFIX,), {"path": "/admin/users"}, D, "foo/deny-admin", 0
    ),
    case(
        "path-prefix-denies-exact", (DENY_PATH_PREFIX,), {"path": "/admin"}, D, "foo/deny-admin", 0
    ),
    case("path-prefix-allows-other", (DENY_PATH_PREFIX,), {"path": "/public/admin"}, A),
    case(
        "path-suffix-denies",
        (DENY_PATH_SUFFIX,),
        {"path": "/keys/a.secret"},
        D,
        "foo/deny-secret",
        0,
    ),
    case("path-suffix-allows-other", (DENY_PATH_SUFFIX,), {"path": "/keys/a.secrets"}, A),
    case("not-methods-allows-get", (ALLOW_NOT_METHODS,), {}, A, "foo/allow-not-delete", 0),
    case("not-methods-denies-delete", (ALLOW_NOT_METHODS,), {"method": "DELETE"}, D),
    case("not-methods-denies-put", (ALLOW_NOT_METHODS,), {"method": "PUT"}, D),
    case("host-exact", (ALLOW_HOST,), {}, A, "foo/allow-host", 0),
    case("host-case-insensitive", (ALLOW_HOST,), {"host": "HttpBin.Foo"}, A, "foo/allow-host", 0),
    case("host-suffix", (ALLOW_HOST,), {"host": "api.example.com"}, A, "foo/allow-host", 0),
    case("host-suffix-miss", (ALLOW_HOST,), {"host": "example.com"}, D),
    case(
        "host-port-is-ignored", (ALLOW_HOST,), {"host": "httpbin.foo:8000"}, A, "foo/allow-host", 0
    ),
    case(
        "deny-host-star-port-matches-bare-host",
        (DENY_HOST_ANY_PORT,),
        {},
        D,
        "foo/deny-host-port",
        0,
    ),
    case("deny-host-star-port-other-host", (DENY_HOST_ANY_PORT,), {"host": "other:80"}, A),
    case(
        "not-hosts-denies-other", (DENY_NOT_HOST,), {"host": "evil.foo"}, D, "foo/deny-not-host", 0
    ),
    case("not-hosts-allows-listed", (DENY_NOT_HOST,), {}, A),
    case("port-allows", (ALLOW_PORT,), {}, A, "foo/allow-port", 0),
    case("port-denies-other", (ALLOW_PORT,), {"destination_port": 8001}, D),
    case(
        "not-ports-denies-other",
        (DENY_NOT_PORT,),
        {"destination_port": 8080},
        D,
        "foo/deny-not-port",
        0,
    ),
    case("not-ports-allows-listed", (DENY_NOT_PORT,), {"destination_port": 9000}, A),
    # IP blocks
    case("ip-block-cidr", (ALLOW_IP,), {"source_ip": "10.0.0.200"}, A, "foo/allow-ip", 0),
    case("ip-block-single", (ALLOW_IP,), {"source_ip": "192.168.1.7"}, A, "foo/allow-ip", 0),
    case("ip-block-miss", (ALLOW_IP,), {"source_ip": "10.0.1.1"}, D),
    case("ip-block-ipv6-miss", (ALLOW_IP,), {"source_ip": "::1"}, D),
    case(
        "not-ip-blocks-denies-outside",
        (DENY_NOT_IP,),
        {"source_ip": "172.16.0.1"},
        D,
        "foo/deny-not-ip",
        0,
    ),
    case("not-ip-blocks-allows-inside", (DENY_NOT_IP,), {"source_ip": "10.9.9.9"}, A),
    case(
        "remote-ip-from-xff",
        (ALLOW_REMOTE_IP,),
        {"remote_ip": "203.0.113.5"},
        A,
        "foo/allow-remote",
        0,
    ),
    case(
        "remote-ip-defaults-to-source",
        (ALLOW_REMOTE_IP,),
        {"source_ip": "203.0.113.9"},
        A,
        "foo/allow-remote",
        0,
    ),
    case("remote-ip-miss", (ALLOW_REMOTE_IP,), {"remote_ip": "198.51.100.1"}, D),
    # rule structure: AND inside a source/operation, OR across entries and rules
    case(
        "and-from-to-all-match",
        (ALLOW_FROM_AND_TO,),
        {"method": "POST", "path": "/v1/models/llama:predict"},
        A,
        "foo/allow-and",
        0,
    ),
    case("and-from-to-wrong-method", (ALLOW_FROM_AND_TO,), {"path": "/v1/models/llama"}, D),
    case(
        "and-from-to-wrong-principal",
        (ALLOW_FROM_AND_TO,),
        {"method": "POST", "path": "/v1/models/x", "source_principal": "cluster.local/ns/foo/sa/x"},
        D,
    ),
    case(
        "or-rules-second",
        (ALLOW_TWO_RULES,),
        {"source_principal": "cluster.local/ns/bar/sa/y"},
        A,
        "foo/allow-or",
        1,
    ),
    case("or-rules-first", (ALLOW_TWO_RULES,), {"method": "POST"}, A, "foo/allow-or", 0),
    case("or-rules-none", (ALLOW_TWO_RULES,), {}, D),
    case("or-sources-second", (ALLOW_TWO_SOURCES,), {}, A, "foo/allow-or-sources", 0),
    case(
        "or-sources-first",
        (ALLOW_TWO_SOURCES,),
        {"source_principal": "cluster.local/ns/bar/sa/x"},
        A,
        "foo/allow-or-sources",
        0,
    ),
    case(
        "and-fields-both",
        (ALLOW_AND_FIELDS,),
        {"source_ip": "10.1.2.3"},
        A,
        "foo/allow-and-fields",
        0,
    ),
    case("and-fields-one-missing", (ALLOW_AND_FIELDS,), {}, D),
    # when conditions
    case(
        "header-exact",
        (ALLOW_HEADER,),
        {"headers": {"x-tenant": ("acme",)}},
        A,
        "foo/allow-header",
        0,
    ),
    case(
        "header-prefix",
        (ALLOW_HEADER,),
        {"headers": {"x-tenant": ("beta-7",)}},
        A,
        "foo/allow-header",
        0,
    ),
    case("header-wrong", (ALLOW_HEADER,), {"headers": {"x-tenant": ("other",)}}, D),
    case("header-missing", (ALLOW_HEADER,), {}, D),
    case("header-value-case-sensitive", (ALLOW_HEADER,), {"headers": {"x-tenant": ("ACME",)}}, D),
    case(
        "header-presence-denies",
        (DENY_HEADER_PRESENT,),
        {"headers": {"x-debug": ("1",)}},
        D,
        "foo/deny-debug",
        0,
    ),
    case("header-presence-absent", (DENY_HEADER_PRESENT,), {}, A),
    case(
        "header-not-values-other",
        (ALLOW_NOT_HEADER,),
        {"headers": {"x-env": ("dev",)}},
        A,
        "foo/allow-not-header",
        0,
    ),
    case("header-not-values-absent", (ALLOW_NOT_HEADER,), {}, A, "foo/allow-not-header", 0),
    case("header-not-values-hit", (ALLOW_NOT_HEADER,), {"headers": {"x-env": ("prod",)}}, D),
    case(
        "when-source-ip-in",
        (ALLOW_SOURCE_IP_WHEN,),
        {"source_ip": "10.0.3.4"},
        A,
        "foo/allow-when-ip",
        0,
    ),
    case("when-source-ip-not-value", (ALLOW_SOURCE_IP_WHEN,), {"source_ip": "10.0.0.66"}, D),
    case("when-source-ip-out", (ALLOW_SOURCE_IP_WHEN,), {"source_ip": "10.1.0.1"}, D),
    case("when-destination-port", (ALLOW_DEST_PORT_WHEN,), {}, A, "foo/allow-when-port", 0),
    case("when-destination-port-miss", (ALLOW_DEST_PORT_WHEN,), {"destination_port": 80}, D),
    case("when-sni", (ALLOW_SNI,), {"sni": "httpbin.foo.svc.cluster.local"}, A, "foo/allow-sni", 0),
    case("when-sni-absent", (ALLOW_SNI,), {}, D),
    case("when-source-namespace", (ALLOW_SOURCE_NS_WHEN,), {}, A, "foo/allow-when-ns", 0),
    case("when-source-namespace-plaintext", (ALLOW_SOURCE_NS_WHEN,), {"source_principal": None}, D),
    case("when-destination-ip", (ALLOW_DEST_IP_WHEN,), {}, A, "foo/allow-when-dest-ip", 0),
    case("when-destination-ip-miss", (ALLOW_DEST_IP_WHEN,), {"destination_ip": "10.0.0.10"}, D),
    # JWT: request principals and claims
    case("jwt-required-present", (REQUIRE_JWT,), JWT, A, "foo/require-jwt", 0),
    case("jwt-required-absent", (REQUIRE_JWT,), {}, D),
    case("deny-no-jwt-absent", (DENY_NO_JWT,), {}, D, "foo/deny-no-jwt", 0),
    case("deny-no-jwt-present", (DENY_NO_JWT,), JWT, A),
    case("issuer-prefix", (ALLOW_ISSUER,), JWT, A, "foo/allow-issuer", 0),
    case(
        "issuer-prefix-other",
        (ALLOW_ISSUER,),
        {**JWT, "request_principal": "https://evil/alice"},
        D,
    ),
    case("claim-list-contains", (ALLOW_GROUP_CLAIM,), JWT, A, "foo/allow-group", 0),
    case(
        "claim-list-missing-value",
        (ALLOW_GROUP_CLAIM,),
        {**JWT, "claims": {"groups": ["users"]}},
        D,
    ),
    case(
        "claim-string",
        (ALLOW_GROUP_CLAIM,),
        {**JWT, "claims": {"groups": "admins"}},
        A,
        "foo/allow-group",
        0,
    ),
    case("claim-no-jwt", (ALLOW_GROUP_CLAIM,), {}, D),
    case("nested-claim-prefix", (ALLOW_NESTED_CLAIM,), JWT, A, "foo/allow-nested", 0),
    case(
        "nested-claim-miss",
        (ALLOW_NESTED_CLAIM,),
        {**JWT, "claims": {"realm": {"role": "admin"}}},
        D,
    ),
    case("nested-claim-not-object", (ALLOW_NESTED_CLAIM,), {**JWT, "claims": {"realm": "x"}}, D),
    case("audience-ok", (DENY_AUDIENCE,), JWT, A),
    case(
        "audience-wrong-denied",
        (DENY_AUDIENCE,),
        {**JWT, "audiences": ("other",)},
        D,
        "foo/deny-aud",
        0,
    ),
    case("audience-rule-needs-jwt", (DENY_AUDIENCE,), {}, A),
    case("presenter", (ALLOW_PRESENTER,), JWT, A, "foo/allow-azp", 0),
    case("presenter-miss", (ALLOW_PRESENTER,), {**JWT, "presenter": "cli"}, D),
    # AUDIT marks, never decides
    case("audit-marks-post", (AUDIT_POST,), {"method": "POST"}, A, audit=True),
    case("audit-quiet-on-get", (AUDIT_POST,), {}, A),
    case(
        "audit-with-deny",
        (AUDIT_POST, DENY_ALL),
        {"method": "POST"},
        D,
        "foo/deny-all",
        0,
        audit=True,
    ),
    case("audit-does-not-allow", (AUDIT_POST, ALLOW_NOTHING), {"method": "POST"}, D, audit=True),
    # scope: root namespace, other namespaces, selectors
    case(
        "root-deny-applies",
        (ROOT_DENY_DELETE,),
        {"method": "DELETE"},
        D,
        "istio-system/root-deny-delete",
        0,
    ),
    case("root-deny-other-method", (ROOT_DENY_DELETE, ALLOW_ALL), {}, A, "foo/allow-all", 0),
    case(
        "root-deny-beats-ns-allow",
        (ROOT_DENY_DELETE, ALLOW_ALL),
        {"method": "DELETE"},
        D,
        "istio-system/root-deny-delete",
        0,
    ),
    case(
        "root-allow-nothing-with-ns-allow",
        (ROOT_ALLOW_NOTHING, ALLOW_SLEEP),
        {},
        A,
        "foo/allow-sleep",
        0,
    ),
    case("root-allow-nothing-alone", (ROOT_ALLOW_NOTHING,), {}, D),
    case(
        "custom-root-namespace", (ROOT_DENY_DELETE,), {"method": "DELETE", "_root": "mesh-root"}, A
    ),
    case("other-namespace-policy-ignored", (OTHER_NS_DENY_ALL,), {}, A),
    case("selector-other-app-ignored", (SELECTOR_OTHER,), {}, A),
    case(
        "selector-all-labels-match",
        (SELECTOR_TWO_LABELS,),
        {"path": "/v1-only"},
        D,
        "foo/deny-v1",
        0,
    ),
    case(
        "selector-label-mismatch",
        (SELECTOR_TWO_LABELS,),
        {"path": "/v1-only", "_workload": "httpbin-v2"},
        A,
    ),
    case(
        "root-selector-any-namespace",
        (ROOT_SELECTOR,),
        {"path": "/root-blocked", "_workload": "httpbin-bar"},
        D,
        "istio-system/root-httpbin-deny",
        0,
    ),
    case("v1beta1-loads", (V1BETA1_DENY,), {"path": "/beta"}, D, "foo/beta-deny", 0),
    # TCP traffic: HTTP-only fields
    case(
        "tcp-deny-ignores-methods",
        (TCP_DENY_METHOD_PORT,),
        {"http": False, "method": "", "path": "", "destination_port": 9000},
        D,
        "foo/tcp-deny",
        0,
    ),
    case(
        "tcp-deny-other-port",
        (TCP_DENY_METHOD_PORT,),
        {"http": False, "method": "", "path": "", "destination_port": 9001},
        A,
    ),
    case(
        "tcp-allow-with-methods-matches-nothing",
        (TCP_ALLOW_METHOD,),
        {"http": False, "method": "", "path": "", "destination_port": 9000},
        D,
    ),
    case(
        "http-allow-with-methods",
        (TCP_ALLOW_METHOD,),
        {"destination_port": 9000},
        A,
        "foo/tcp-allow-method",
        0,
    ),
    case(
        "tcp-allow-port",
        (TCP_ALLOW_PORT,),
        {"http": False, "method": "", "path": "", "destination_port": 9001},
        A,
        "foo/tcp-allow-port",
        0,
    ),
    case(
        "tcp-allow-port-miss",
        (TCP_ALLOW_PORT,),
        {"http": False, "method": "", "path": "", "destination_port": 9002},
        D,
    ),
    case(
        "tcp-deny-jwt-rule-ignores-jwt",
        (DENY_NO_JWT,),
        {"http": False, "method": "", "path": ""},
        D,
        "foo/deny-no-jwt",
        0,
    ),
    case(
        "tcp-allow-jwt-rule-matches-nothing",
        (REQUIRE_JWT,),
        {"http": False, "method": "", "path": ""},
        D,
    ),
]

WORKLOADS = {
    "ratings": Workload(namespace="foo", labels={"app": "ratings"}),
    "httpbin-v2": Workload(namespace="foo", labels={"app": "httpbin", "version": "v2"}),
    "httpbin-bar": Workload(namespace="bar", labels={"app": "httpbin"}),
}


@pytest.mark.parametrize(("policies", "req", "action", "policy_ref", "rule", "audit"), CASES)
def test_authorization_conformance(
    policies: tuple[str, ...],
    req: dict[str, Any],
    action: str,
    policy_ref: str | None,
    rule: int | None,
    audit: bool,
) -> None:
    req = dict(req)
    workload = WORKLOADS[req.pop("_workload")] if "_workload" in req else HTTPBIN
    root = req.pop("_root", "istio-system")
    compiled = (
        compile_text(docs(*policies), workload, root_namespace=root)
        if policies
        else (compile_text("", workload, root_namespace=root))
    )
    attrs = request(**req)
    decision = compiled.authorization.evaluate(attrs)
    assert (decision.action.value, decision.policy, decision.rule, decision.audit) == (
        action,
        policy_ref,
        rule,
        audit,
    ), decision.reason
    oracle = reference_evaluate(compiled.authorization.policies, attrs)
    assert (oracle.action, oracle.policy, oracle.rule, oracle.audit) == (
        decision.action,
        decision.policy,
        decision.rule,
        decision.audit,
    )


def test_conformance_table_is_large_enough() -> None:
    assert len(CASES) >= 100


# --- PeerAuthentication: most specific wins, UNSET inherits, ports override ---
MESH_STRICT = policy(
    "default", "mtls: {mode: STRICT}", namespace="istio-system", kind="PeerAuthentication"
)
NS_PERMISSIVE = policy("default", "mtls: {mode: PERMISSIVE}", kind="PeerAuthentication")
NS_UNSET = policy("ns-unset", "mtls: {mode: UNSET}", kind="PeerAuthentication")
WL_DISABLE = policy(
    "httpbin",
    """
selector: {matchLabels: {app: httpbin}}
mtls: {mode: DISABLE}
""",
    kind="PeerAuthentication",
)
WL_PORTS = policy(
    "httpbin-ports",
    """
selector: {matchLabels: {app: httpbin}}
mtls: {mode: UNSET}
portLevelMtls:
  8080: {mode: DISABLE}
  9090: {mode: UNSET}
""",
    kind="PeerAuthentication",
)
WL_OTHER = policy(
    "ratings",
    """
selector: {matchLabels: {app: ratings}}
mtls: {mode: DISABLE}
""",
    kind="PeerAuthentication",
)
OTHER_NS = policy("default", "mtls: {mode: DISABLE}", namespace="bar", kind="PeerAuthentication")


@pytest.mark.parametrize(
    ("policies", "port", "mode", "level"),
    [
        pytest.param((), 8000, MtlsMode.PERMISSIVE, "default", id="default-permissive"),
        pytest.param((MESH_STRICT,), 8000, MtlsMode.STRICT, "mesh", id="mesh-strict"),
        pytest.param(
            (MESH_STRICT, NS_PERMISSIVE),
            8000,
            MtlsMode.PERMISSIVE,
            "namespace",
            id="namespace-over-mesh",
        ),
        pytest.param(
            (MESH_STRICT, NS_UNSET), 8000, MtlsMode.STRICT, "mesh", id="namespace-unset-inherits"
        ),
        pytest.param(
            (MESH_STRICT, NS_PERMISSIVE, WL_DISABLE),
            8000,
            MtlsMode.DISABLE,
            "workload",
            id="workload-over-namespace",
        ),
        pytest.param((MESH_STRICT, WL_PORTS), 8080, MtlsMode.DISABLE, "port", id="port-level"),
        pytest.param(
            (MESH_STRICT, WL_PORTS), 8000, MtlsMode.STRICT, "mesh", id="other-port-inherits"
        ),
        pytest.param(
            (MESH_STRICT, NS_PERMISSIVE, WL_PORTS),
            9090,
            MtlsMode.PERMISSIVE,
            "namespace",
            id="port-unset-inherits",
        ),
        pytest.param(
            (MESH_STRICT, WL_OTHER), 8000, MtlsMode.STRICT, "mesh", id="other-workload-selector"
        ),
        pytest.param(
            (MESH_STRICT, OTHER_NS), 8000, MtlsMode.STRICT, "mesh", id="other-namespace-ignored"
        ),
    ],
)
def test_peer_authentication_conformance(
    policies: tuple[str, ...], port: int, mode: MtlsMode, level: str
) -> None:
    compiled = compile_text(docs(*policies)) if policies else compile_text("")
    resolution = compiled.peers.resolve(port)
    assert (resolution.mode, resolution.level) == (mode, level)
    assert compiled.mtls_mode(port) is mode


def test_oldest_workload_peer_authentication_wins() -> None:
    newer = policy(
        "a-newer",
        """
selector: {matchLabels: {app: httpbin}}
mtls: {mode: DISABLE}
""",
        kind="PeerAuthentication",
    ).replace("namespace: foo}", "namespace: foo, creationTimestamp: '2024-02-01T00:00:00Z'}")
    older = policy(
        "b-older",
        """
selector: {matchLabels: {app: httpbin}}
mtls: {mode: STRICT}
""",
        kind="PeerAuthentication",
    ).replace("namespace: foo}", "namespace: foo, creationTimestamp: '2024-01-01T00:00:00Z'}")
    compiled = compile_text(docs(newer, older))
    assert compiled.peers.resolve(8000).policy == "foo/b-older"
    assert [p.name for p in compiled.peers.workload_conflicts] == ["a-newer"]
