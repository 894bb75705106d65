"""The running mesh's state file: how ``meshlet status`` finds a mesh ``meshlet up`` runs.

``<state_dir>/mesh.json`` is rewritten (atomically) whenever something changes:
a sidecar announced a new admin address after a restart, a pid changed. It holds
no secrets: addresses, pids, SPIFFE IDs and log paths.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from meshlet.errors import ConfigError

STATE_FILE = "mesh.json"
_FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaState:
    name: str
    workload: str
    service: str | None
    namespace: str
    spiffe_id: str
    app: str | None  # host:port of the app; None for a client-only workload
    inbound: str | None
    outbound: str
    admin: str | None  # announced by the sidecar; None until it is ready
    sidecar_pid: int | None
    app_pid: int | None
    directory: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshState:
    pid: int  # the `meshlet up` process
    source: str  # the mesh.yaml it runs
    trust_domain: str
    started_at: float  # wall clock, seconds since the epoch
    replicas: tuple[ReplicaState, ...]
    control: str | None = None  # https://host:port of the control plane, if one runs


def write_state(state_dir: Path, state: MeshState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    data = {"format": _FORMAT, **asdict(state)}
    tmp = state_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(state_dir / STATE_FILE)


def remove_state(state_dir: Path) -> None:
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(state_dir: Path) -> MeshState:
    """The state of the mesh running from ``state_dir``; ConfigError if none runs."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{state_dir}: no running mesh here (start one with 'meshlet up mesh.yaml')"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable mesh state ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ConfigError(f"{path}: unknown mesh state format")
    try:
        state = MeshState(
            pid=int(data["pid"]),
            source=str(data["source"]),
            trust_domain=str(data["trust_domain"]),
            started_at=float(data["started_at"]),
            replicas=tuple(ReplicaState(**r) for r in data["replicas"]),
            control=data.get("control"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed mesh state ({exc})") from exc
    if not pid_alive(state.pid):
        raise ConfigError(
            f"{state_dir}: the mesh that wrote this state (pid {state.pid}) is no longer running"
        )
    return state
