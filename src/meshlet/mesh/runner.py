"""``meshlet up``: a whole mesh on one machine, started in order and supervised.

Order matters for correctness, not just looks:

1. the CA (kept in ``state_dir/ca`` across runs) issues one SVID per replica;
2. every replica's sidecar bootstrap is written and checked before anything starts
   (a bad file is reported with nothing running);
3. every sidecar starts; each announces its addresses and must answer ``/ready``;
4. only then the apps start, with ``HTTP_PROXY`` pointing at their own sidecar,
   so no app request ever races an absent proxy; service apps must pass their
   readiness check (or at least accept connections) before client-only workloads
   start, so a frontend's first call finds its backend up;
5. everything is supervised (restart with backoff) and SVIDs are renewed at
   half-life until ``stop``, which stops apps first, then sidecars, each process
   group with SIGTERM then SIGKILL.

In control-plane mode (``control_plane: true``) step 1 and the renewals are the
control plane's job instead, and step 2 is replaced by starting it
(``meshlet.mesh.controlplane``); apps then also wait for complete snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import yaml

from meshlet.clock import Clock, MonotonicClock
from meshlet.config.bootstrap import load_bootstrap
from meshlet.config.istio_security import load_security_paths
from meshlet.config.mesh import MeshConfig
from meshlet.errors import ConfigError, MeshError
from meshlet.identity.ca import DEFAULT_SVID_TTL_S, CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.mesh.controlplane import ControlPlane, await_endpoints
from meshlet.mesh.plan import HOST, Features, MeshPlan, ReplicaPlan, bootstrap_for, plan_mesh
from meshlet.mesh.ports import START_ATTEMPTS, PortPicker
from meshlet.mesh.state import (
    MeshState,
    ReplicaState,
    read_state,
    remove_state,
    write_state,
)
from meshlet.mesh.supervisor import ProcessSpec, Supervised
from meshlet.mesh.waiting import PortClash, http_ok, port_open, until, wait_announced
from meshlet.traffic.loader import load_routing

SIDECAR_READY_TIMEOUT_S = 20.0  # a sidecar is ready in well under a second; 2 cores are shared
APP_READY_TIMEOUT_S = 90.0  # importing torch and building a model takes seconds
STOP_GRACE_S = 5.0  # matches the proxy's default drain deadline
RENEW_CHECK_S = 30.0  # how often SVID ages are looked at; renewal is at half-life (12 h)


def renew_due(issued_at: float, not_after: float, now: float, fraction: float = 0.5) -> bool:
    """Renew once ``fraction`` of the lifetime has passed; half by default, as Istio
    and SPIRE do: plenty of time to retry, and a leaked key is useful for half as long."""
    return now >= issued_at + (not_after - issued_at) * fraction


def detect_features() -> Features:
    """Which optional engines the sidecar in this build has (see Features)."""

    def has(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    return Features(policies=has("meshlet.proxy.authz"), routing=has("meshlet.proxy.routing"))


@dataclass(slots=True, kw_only=True)
class Replica:
    """A replica at run time: its plan, its two processes, what the sidecar announced."""

    plan: ReplicaPlan
    sidecar: Supervised
    app: Supervised | None = None
    admin: str | None = None
    announced: asyncio.Event = field(default_factory=asyncio.Event)


class MeshRunner:
    """Starts, supervises and stops one mesh. Use ``async with`` or start/stop."""

    def __init__(
        self,
        config: MeshConfig,
        *,
        proxy_argv: Sequence[str] = (sys.executable, "-m", "meshlet", "proxy"),
        control_argv: Sequence[str] = (sys.executable, "-m", "meshlet", "control"),
        on_event: Callable[[str], None] = print,
        features: Features | None = None,
        python: str = sys.executable,
        clock: Clock | None = None,
        svid_ttl_s: float = DEFAULT_SVID_TTL_S,
        renew_check_s: float = RENEW_CHECK_S,
        renew_fraction: float = 0.5,
    ) -> None:
        self.renew_fraction = renew_fraction
        self.svid_ttl_s = svid_ttl_s
        self.renew_check_s = renew_check_s
        self.svid_windows: dict[str, tuple[float, float]] = {}  # replica -> validity
        self.renewals = 0
        self._ca: CertificateAuthority | None = None
        self.clock = clock or MonotonicClock()
        self.started_at = 0.0
        self.config = config
        self.proxy_argv = tuple(proxy_argv)
        self.control_argv = tuple(control_argv)
        self.control: ControlPlane | None = None
        self.control_port: int | None = None
        self.on_event = on_event
        self.features = features or detect_features()
        self.python = python
        self.plan: MeshPlan | None = None
        self.replicas: list[Replica] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- start ------------------------------------------------------------------
    async def start(self) -> None:
        """Bring the whole mesh up, or leave nothing running and raise."""
        self._check_not_running()
        self._check_istio_files()
        self.started_at = self.clock.wall()
        ca = self._certificate_authority()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self._start_once(ca)
                return
            except PortClash as exc:
                await self.stop()
                if attempt == START_ATTEMPTS:
                    raise ConfigError(f"ports kept being taken while starting: {exc}") from exc
                self.on_event(f"port taken while starting ({exc}); retrying with new ports")
            except BaseException:
                await self.stop()
                raise

    def _check_not_running(self) -> None:
        try:
            state = read_state(self.config.state_dir)
        except ConfigError:
            return  # none there, or the one that was there is gone
        if state.pid != os.getpid():
            raise ConfigError(
                f"{self.config.state_dir}: a mesh is already running from here "
                f"(pid {state.pid}); stop it first"
            )

    def _certificate_authority(self) -> CertificateAuthority:
        directory = self.config.state_dir / "ca"
        if (directory / "ca.json").exists():
            ca = CertificateAuthority.load(directory)
            if ca.trust_domain != self.config.trust_domain:
                raise ConfigError(
                    f"{directory}: this CA is for trust domain {ca.trust_domain!r}, not "
                    f"{self.config.trust_domain!r}; remove {self.config.state_dir} to start afresh"
                )
            return ca
        return CertificateAuthority.init(directory, self.config.trust_domain, now=self.clock.wall())

    def _check_istio_files(self) -> None:
        """Policy and route files must load even when this build's sidecar cannot
        apply them yet: a typo is reported now, with nothing started."""
        if self.config.policies:
            load_security_paths([str(p) for p in self.config.policies])
        if self.config.routing:
            load_routing(self.config.routing)

    def _prepare(self, ca: CertificateAuthority) -> MeshPlan:
        picker = PortPicker()
        try:
            plan = plan_mesh(self.config, next_port=picker, python=self.python)
            self.control_port = picker() if self.config.control_plane else None
        finally:
            picker.release()  # closed just before start: the documented race (ports.py)
        self._ca = ca
        for r in plan.replicas:
            r.directory.mkdir(parents=True, exist_ok=True)
            if self.config.control_plane:
                continue  # the sidecar makes its key and gets its SVID from the control plane
            self._issue(r)
            text = yaml.safe_dump(bootstrap_for(plan, r, self.features), sort_keys=False)
            r.bootstrap_path.write_text(text, encoding="utf-8")
            load_bootstrap(r.bootstrap_path)  # our own output must pass the proxy's checks
        if self.config.audit:
            (self.config.state_dir / "audit").mkdir(parents=True, exist_ok=True)
        return plan

    def _issue(self, replica: ReplicaPlan) -> None:
        """A fresh key and SVID into the replica's directory; the sidecar notices the
        new files within a second and swaps them in with no dropped request."""
        assert self._ca is not None, "BUG: issuing before the CA is loaded"
        now = self.clock.wall()
        svid = self._ca.issue(SpiffeId.parse(replica.spiffe_id), now=now, ttl_s=self.svid_ttl_s)
        svid.write(replica.directory)
        # From the issue time, not not_before: certificates are backdated for skew.
        self.svid_windows[replica.name] = (now, svid.not_after)

    async def _renew_forever(self) -> None:
        interval = min(self.renew_check_s, self.svid_ttl_s * self.renew_fraction / 5)
        while True:
            await asyncio.sleep(interval)
            now = self.clock.wall()
            for r in self.replicas:
                window = self.svid_windows.get(r.plan.name)
                if window is not None and renew_due(*window, now, self.renew_fraction):
                    try:
                        self._issue(r.plan)
                    except (MeshError, OSError) as exc:  # retried at the next check
                        self.on_event(f"{r.plan.name}: certificate renewal failed: {exc}")
                        continue
                    self.renewals += 1

    async def _start_once(self, ca: CertificateAuthority) -> None:
        self.plan = plan = self._prepare(ca)
        if self.config.control_plane:
            assert self.control_port is not None, "BUG: no port for the control plane"
            self.control = ControlPlane(
                self.config, argv=self.control_argv, port=self.control_port, on_event=self.on_event
            )
            await self.control.start()
        self.replicas = [self._replica(r) for r in plan.replicas]
        await asyncio.gather(*(self._start_sidecar(r) for r in self.replicas))
        if self.config.control_plane:
            await asyncio.gather(
                *(await_endpoints(plan, r.admin or "", r.sidecar) for r in self.replicas)
            )
        services = [r for r in self.replicas if r.plan.service is not None]
        clients = [r for r in self.replicas if r.plan.service is None]
        await asyncio.gather(*(self._start_app(r) for r in services))
        await asyncio.gather(*(self._start_app(r) for r in clients))
        self.write_state()
        if self.control is not None:
            self._tasks.append(asyncio.create_task(self._watch(self.control.process)))
        else:  # in control-plane mode each sidecar renews its own SVID
            self._tasks.append(asyncio.create_task(self._renew_forever()))
        for r in self.replicas:
            self._tasks.append(asyncio.create_task(self._watch(r.sidecar)))
            if r.app is not None:
                self._tasks.append(asyncio.create_task(self._watch(r.app)))

    def _replica(self, plan: ReplicaPlan) -> Replica:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            env.pop(key, None)  # a sidecar must not send its own traffic to a proxy
        spec = ProcessSpec(
            name=f"{plan.name} sidecar",
            argv=self._sidecar_argv(plan),
            env=env,
            cwd=plan.directory,
            log_path=plan.directory / "sidecar.log",
            restart="always",
        )
        replica = Replica(plan=plan, sidecar=Supervised(spec, on_event=self.on_event))
        replica.sidecar.on_line = lambda line: self._sidecar_line(replica, line)
        return replica

    def _sidecar_argv(self, plan: ReplicaPlan) -> tuple[str, ...]:
        if self.control is None:
            return (*self.proxy_argv, "--config", str(plan.bootstrap_path))
        assert self._ca is not None, "BUG: sidecar before the CA"
        token = self._ca.issue_join_token(SpiffeId.parse(plan.spiffe_id), now=self.clock.wall())
        return self.control.sidecar_argv(self.proxy_argv, plan, token)

    @property
    def control_url(self) -> str:
        return self.control.url if self.control is not None else ""

    def _sidecar_line(self, replica: Replica, line: str) -> None:
        if not line.startswith("{") or '"ready"' not in line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("event") == "ready":
            changed = replica.admin is not None and replica.admin != event.get("admin")
            replica.admin = event.get("admin")
            replica.announced.set()
            if changed:
                self.write_state()

    async def _start_sidecar(self, replica: Replica) -> None:
        sidecar = replica.sidecar
        await sidecar.spawn()
        await wait_announced(sidecar, replica.announced, SIDECAR_READY_TIMEOUT_S)
        assert replica.admin is not None, "BUG: a sidecar announced no admin address"
        host, _, port = replica.admin.rpartition(":")
        await until(
            lambda: http_ok(host, int(port), "/ready"),
            sidecar,
            SIDECAR_READY_TIMEOUT_S,
            "its admin /ready",
        )

    async def _start_app(self, replica: Replica) -> None:
        plan = replica.plan
        spec = ProcessSpec(
            name=f"{plan.name} app",
            argv=plan.argv,
            env={**os.environ, **dict(plan.env)},
            cwd=self.config.source.parent,
            log_path=plan.directory / "app.log",
            restart=plan.workload.restart,
        )
        replica.app = app = Supervised(spec, on_event=self.on_event)
        await app.spawn()
        if plan.app_port is None:
            return
        port = plan.app_port
        path = plan.readiness_path
        probe = (lambda: http_ok(HOST, port, path)) if path else (lambda: port_open(HOST, port))
        await until(probe, app, APP_READY_TIMEOUT_S, f"readiness ({path or 'port ' + str(port)})")

    async def _watch(self, process: Supervised) -> None:
        await process.supervise()
        self.write_state()

    # -- state and display -----------------------------------------------------------
    def write_state(self) -> None:
        if self.plan is None:
            return
        replicas = tuple(
            ReplicaState(
                name=r.plan.name,
                workload=r.plan.workload.name,
                service=r.plan.service,
                namespace=r.plan.workload.namespace,
                spiffe_id=r.plan.spiffe_id,
                app=f"{HOST}:{r.plan.app_port}" if r.plan.app_port else None,
                inbound=f"{HOST}:{r.plan.inbound_port}" if r.plan.inbound_port else None,
                outbound=f"{HOST}:{r.plan.outbound_port}",
                admin=r.admin,
                sidecar_pid=r.sidecar.pid if r.sidecar.running else None,
                app_pid=r.app.pid if r.app is not None and r.app.running else None,
                directory=str(r.plan.directory),
            )
            for r in self.replicas
        )
        write_state(
            self.config.state_dir,
            MeshState(
                pid=os.getpid(),
                source=str(self.config.source),
                trust_domain=self.config.trust_domain,
                started_at=self.started_at,
                replicas=replicas,
                control=self.control_url or None,
            ),
        )

    def pids(self) -> list[int]:
        """Every live process this runner started (for tests and diagnostics)."""
        out = []
        for r in self.replicas:
            for p in (r.sidecar, r.app):
                if p is not None and p.running and p.pid is not None:
                    out.append(p.pid)
        return out

    # -- stop ---------------------------------------------------------------------------
    async def stop(self) -> None:
        """Apps first (their in-flight calls still have a sidecar), then sidecars."""
        apps = [r.app for r in self.replicas if r.app is not None]
        await asyncio.gather(*(a.stop(STOP_GRACE_S) for a in apps))
        await asyncio.gather(*(r.sidecar.stop(STOP_GRACE_S) for r in self.replicas))
        if self.control is not None:
            await self.control.process.stop(STOP_GRACE_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(ConfigError):
            if read_state(self.config.state_dir).pid == os.getpid():
                remove_state(self.config.state_dir)

    async def __aenter__(self) -> MeshRunner:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
