#!/usr/bin/env python3
"""The `ams-sync` charm (deployed as `ams`): an AMS node's registry agent.

Related on `registry-client` the node pulls from the registry; on
`registry-publisher` it pushes to it. Every event re-derives the agent's
registry settings from the one live relation: its first aar unit with complete
data gives the address and the certificate to pin. Without a relation the
settings are cleared and the sync service stopped; the node's applications
stay where they are.
"""
import logging
import os
import re

import ops

import aar_interface
import workload
from agent_cli import Agent, AgentError

logger = logging.getLogger(__name__)

SERVICE = workload.Service(program="ams-sync", snap="ams", snap_app="ams-sync",
                           snap_service="sync", data_env="AMS_SYNC_DATA_DIR",
                           description="AMS registry agent")
DEFAULT_INTERVAL = "1h"  # the agent's own default, so an empty option compares equal
ENDPOINTS = {"registry-client": ("client", "pull"), "registry-publisher": ("publisher", "push")}

NO_RESOURCE = ("attach the agent: juju attach-resource ams ams-sync=./ams.snap "
               "(or the zipapp aar.pyz)")
NOT_RELATED = ("not registered: juju add-relation aar:client ams:registry-client "
               "(or aar:publisher ams:registry-publisher)")
BOTH = ("related on both registry-client and registry-publisher: a node is a client or a "
        "publisher, never both; remove one (juju remove-relation ams:registry-publisher aar)")
WAITING = "waiting for {app} to send its certificate and address"
BAD_DATA = "{unit} sent unusable data: {error}"
SYNCING = "{verb} {url} every {interval} as a {role}"
BAD_METRICS = "metrics-listen {value!r} is not ADDR:PORT (e.g. 127.0.0.1:9310 or [::1]:9310)"
SNAP_METRICS = ("metrics-listen needs the zipapp resource: the ams snap's sync service "
                "runs `ams-sync run` without options; unset it or attach aar.pyz")
_ADDRESS_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):([0-9]{1,5})\Z")
FINGERPRINT_MISMATCH = ("%s published fingerprint %s, but its certificate's DER hashes "
                        "to %s: pinning the certificate's")


class AmsSyncCharm(ops.CharmBase):
    _stored = ops.StoredState()

    def __init__(self, framework):
        super().__init__(framework)
        # run_args: the `ams-sync run` arguments the service was last started with
        self._stored.set_default(kind="", configured=False, managed={}, run_args=["run"])
        self.agent = Agent(os.environ)
        self.workload = workload.Workload(SERVICE, os.environ)
        observe = self.framework.observe
        observe(self.on.install, self._on_install)
        observe(self.on.upgrade_charm, self._on_install)
        observe(self.on.config_changed, self._refresh)
        observe(self.on.update_status, self._refresh)
        observe(self.on.remove, self._on_remove)
        for endpoint in ENDPOINTS:
            relation_events = self.on[endpoint]
            observe(relation_events.relation_joined, self._refresh)
            observe(relation_events.relation_changed, self._refresh)
            observe(relation_events.relation_departed, self._refresh)
            observe(relation_events.relation_broken, self._refresh)

    def _on_install(self, event):
        try:
            resource = self.model.resources.fetch("ams-sync")
            if resource.stat().st_size == 0:
                raise ops.ModelError("empty resource")  # a placeholder, as from charmhub
        except (ops.ModelError, NameError, OSError):
            if not self._stored.kind and not self.agent.installed():
                self.unit.status = ops.BlockedStatus(NO_RESOURCE)
                return
            resource = None  # nothing new attached: keep what runs
        if resource is not None:
            self.unit.status = ops.MaintenanceStatus("installing the agent")
            try:
                self._stored.kind = self.workload.install(resource)
            except workload.WorkloadError as error:
                self.unit.status = ops.BlockedStatus(str(error))
                return
            if self._stored.configured:
                self._restart()  # new code: the loop runs it from now on
        self._refresh(event)

    def _live(self, event):
        """{endpoint: [relations]} without the one being broken."""
        broken = event.relation.id if isinstance(event, ops.RelationBrokenEvent) else None
        return {endpoint: [r for r in self.model.relations[endpoint] if r.id != broken]
                for endpoint in ENDPOINTS}

    def _refresh(self, event):
        try:
            self.unit.status = self._apply(event)
        except (AgentError, workload.WorkloadError) as error:
            self.unit.status = ops.BlockedStatus(str(error))

    def _apply(self, event):
        run_args = self._run_args()
        if isinstance(run_args, ops.StatusBase):
            return run_args
        current = self.agent.settings()  # also makes the client certificate on first use
        self._set(current, self._options())
        live = self._live(event)
        if live["registry-client"] and live["registry-publisher"]:
            return ops.BlockedStatus(BOTH)
        related = [(endpoint, relations[0]) for endpoint, relations in live.items() if relations]
        if not related:
            self._unconfigure()
            return ops.BlockedStatus(NOT_RELATED)
        endpoint, relation = related[0]
        role, registry_mode = ENDPOINTS[endpoint]
        relation.data[self.unit].update(
            aar_interface.node_databag(self.agent.client_certificate(), role))
        departing = getattr(event, "departing_unit", None)
        registry, problem = self._registry(relation, departing)
        if registry is None:
            self._unconfigure()
            return problem or ops.WaitingStatus(WAITING.format(app=relation.app.name))
        if registry.published_fingerprint and registry.published_fingerprint != registry.fingerprint:
            logger.warning(FINGERPRINT_MISMATCH, relation.app.name,
                           registry.published_fingerprint, registry.fingerprint)
        self.agent.trust_registry(registry.certificate)
        url = aar_interface.registry_url(registry.ip, registry.port)
        changed = self._set(current, {"registry.url": url,
                                      "registry.fingerprint": registry.fingerprint,
                                      "registry.mode": registry_mode})
        # The loop re-reads its settings before each cycle, but may sleep for
        # an hour first: a new registry is worth syncing with now. New
        # arguments need a new process.
        if changed or not self._stored.configured or run_args != list(self._stored.run_args):
            self._restart()
        self._stored.configured = True
        return ops.ActiveStatus(SYNCING.format(
            verb="pulling from" if registry_mode == "pull" else "pushing to", url=url,
            interval=current["registry.update_interval"], role=role))

    def _run_args(self):
        """`ams-sync run` and its options, or the status saying why they cannot be."""
        listen = self.config["metrics-listen"].strip()
        if not listen:
            return ["run"]
        match = _ADDRESS_RE.match(listen)
        if not match or not 0 < int(match.group(2)) < 65536:
            return ops.BlockedStatus(BAD_METRICS.format(value=listen))
        if self._stored.kind == workload.SNAP:
            return ops.BlockedStatus(SNAP_METRICS)
        return ["run", "--metrics-listen", listen]

    def _options(self):
        """The settings the charm's options ask for. An empty option leaves what
        the operator set by hand alone, unless the charm had set it (then the
        agent's default comes back)."""
        wanted = {}
        interval = self.config["update_interval"].strip()
        tags = ",".join(t.strip() for t in self.config["filter"].split(",") if t.strip())
        for key, value, default in (("registry.update_interval", interval, DEFAULT_INTERVAL),
                                    ("registry.filter", tags, "")):
            if value or key in self._stored.managed:
                wanted[key] = value or default
            if value:
                self._stored.managed[key] = True
            else:
                self._stored.managed.pop(key, None)
        return wanted

    def _set(self, current, wanted):
        """Set what differs from current (the agent's normalised values);
        True when anything was set."""
        changed = False
        for key, value in wanted.items():
            if current.get(key) != value:
                self.agent.set(key, value)
                current[key] = value
                changed = True
        return changed

    def _registry(self, relation, departing):
        """(RegistryData of the first aar unit with complete data, problem status)."""
        problem = None
        for unit in sorted(relation.units, key=lambda u: u.name):
            if unit == departing:
                continue
            try:
                data = aar_interface.parse_registry(relation.data[unit])
            except aar_interface.InterfaceError as error:
                problem = ops.BlockedStatus(BAD_DATA.format(unit=unit.name, error=error))
                continue
            if data is not None:
                return data, None
        return None, problem

    def _restart(self):
        if self._stored.kind:
            args = self._run_args()
            args = args if isinstance(args, list) else ["run"]
            self.workload.start(self._stored.kind, args)
            self._stored.run_args = args

    def _unconfigure(self):
        """No registry: clear its settings and stop syncing. The node's
        applications and trusted certificates stay."""
        if not self._stored.configured:
            return
        for key in ("registry.url", "registry.fingerprint", "registry.mode"):
            self.agent.set(key, "")
        if self._stored.kind:
            self.workload.stop(self._stored.kind)
        self._stored.configured = False

    def _on_remove(self, _event):
        """The unit goes: stop the service; the data directory stays (it is
        the operator's to delete, and a redeploy picks it up)."""
        if self._stored.kind:
            try:
                self.workload.stop(self._stored.kind)
            except workload.WorkloadError as error:
                logger.warning("%s", error)


if __name__ == "__main__":  # pragma: no cover
    ops.main(AmsSyncCharm)
