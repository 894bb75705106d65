"""Edge schemas of the ``security.istio.io`` resources (pydantic, strict).

They only check shape: unknown fields are refused with ``file:line`` so an
Istio feature meshlet lacks is never silently ignored. Value checks and the
conversion to runtime types live in ``istio_security``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from pydantic.alias_generators import to_camel

from meshlet.config.istio_common import Resource
from meshlet.errors import ConfigError


class StrictSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True)


Strs = list[StrictStr]


class SourceSchema(StrictSchema):
    principals: Strs = []
    not_principals: Strs = []
    request_principals: Strs = []
    not_request_principals: Strs = []
    namespaces: Strs = []
    not_namespaces: Strs = []
    ip_blocks: Strs = []
    not_ip_blocks: Strs = []
    remote_ip_blocks: Strs = []
    not_remote_ip_blocks: Strs = []


class OperationSchema(StrictSchema):
    hosts: Strs = []
    not_hosts: Strs = []
    ports: Strs = []
    not_ports: Strs = []
    methods: Strs = []
    not_methods: Strs = []
    paths: Strs = []
    not_paths: Strs = []


class From(StrictSchema):
    source: SourceSchema


class To(StrictSchema):
    operation: OperationSchema


class ConditionSchema(StrictSchema):
    key: StrictStr
    values: Strs = []
    not_values: Strs = []


class RuleSchema(StrictSchema):
    from_: list[From] = Field(default=[], alias="from")
    to: list[To] = []
    when: list[ConditionSchema] = []


class Provider(StrictSchema):
    name: StrictStr


class AuthzSpec(StrictSchema):
    selector: dict[str, Any] | None = None
    action: StrictStr = "ALLOW"  # Istio's default action
    provider: Provider | None = None
    rules: list[RuleSchema] = []


class PortMtls(StrictSchema):
    mode: StrictStr = "UNSET"


class PeerSpec(StrictSchema):
    selector: dict[str, Any] | None = None
    mtls: PortMtls | None = None
    port_level_mtls: dict[int, PortMtls] = {}


class HeaderSchema(StrictSchema):
    name: StrictStr
    prefix: StrictStr = ""


class ClaimHeader(StrictSchema):
    header: StrictStr
    claim: StrictStr


class JwtRuleSchema(StrictSchema):
    issuer: StrictStr
    audiences: Strs = []
    jwks_uri: StrictStr | None = None
    jwks: StrictStr | None = None
    from_headers: list[HeaderSchema] = []
    from_params: Strs = []
    from_cookies: Strs = []
    output_payload_to_header: StrictStr | None = None
    output_claim_to_headers: list[ClaimHeader] = []
    forward_original_token: StrictBool = False
    timeout: StrictStr | None = None


class RequestAuthnSpec(StrictSchema):
    selector: dict[str, Any] | None = None
    jwt_rules: list[JwtRuleSchema] = []


class ExtAuthzHttp(StrictSchema):
    service: StrictStr
    port: int = Field(gt=0, lt=65536)
    path_prefix: StrictStr = ""
    timeout: StrictStr = "600ms"
    fail_open: StrictBool = False
    status_on_error: StrictStr = "403"
    include_request_headers_in_check: Strs = []
    headers_to_upstream_on_allow: Strs = []


class ProviderSpec(StrictSchema):
    envoy_ext_authz_http: ExtAuthzHttp


class JwksResolverSpec(StrictSchema):
    # Istio's install value pilot.jwksResolverExtraRootCA (PEM), or a file holding it.
    extra_root_ca: StrictStr | None = Field(default=None, alias="extraRootCA")
    extra_root_ca_file: StrictStr | None = Field(default=None, alias="extraRootCAFile")


def validate_spec(model: type[StrictSchema], resource: Resource) -> Any:
    try:
        return model.model_validate(resource.spec)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            path = ("spec", *(p for p in error["loc"] if isinstance(p, str | int)))
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown field (not supported by meshlet)"
            problems.append(resource.problem(path, message))
        raise ConfigError(problems) from exc
