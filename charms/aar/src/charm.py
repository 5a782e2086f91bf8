#!/usr/bin/env python3
"""The `aar` charm: runs the registry and trusts the AMS units related to it.

Every relation event re-derives the whole trust the relations ask for, over
both endpoints, and changes only what differs: a certificate this charm added
and no relation asks for any more is removed; one a relation asks for and the
registry does not trust yet is added with the endpoint's role. Certificates
the operator added by hand are never touched. The charm remembers which
certificate it added for which unit, because a departing unit's data may
already be gone when its departure is seen.
"""
import ipaddress
import logging
import os

import ops

import aar_interface
import workload
from registry_cli import Registry, RegistryError

logger = logging.getLogger(__name__)

SERVICE = workload.Service(program="aar", snap="aar", snap_app="aar", snap_service="daemon",
                           data_env="AAR_DATA_DIR", description="Anbox application registry")

NO_RESOURCE = ("attach the registry: juju attach-resource aar aar=./aar.snap "
               "(or the zipapp aar.pyz)")
NO_CERTIFICATE = "waiting for the registry's first start to create certs/server.crt"
MODE_MISMATCH = ("{unit} asks to be a {mode} on aar:{endpoint}: relate it to "
                 "aar:{mode} instead; not trusted")
BOTH_ROLES = "{unit}'s certificate is related as both client and publisher; trust left as it was"
HAND_TRUSTED = ("{unit}'s certificate {short} is already trusted as {have} by hand: "
                "`aar trust remove {short}` lets the relation trust it as {role}")
REVOKED = "{unit}'s certificate {short} is revoked: the node needs a new certificate"
BAD_DATA = "{unit} sent unusable data: {error}"
SERVING = "serving {url}: trusts {clients} client(s), {publishers} publisher(s)"
IN_BUCKET = "; storage s3://{bucket}"
# The charm's S3 options and the storage.s3 keys of conf/main.yaml they set.
S3_OPTIONS = (("s3-endpoint", "storage.s3.endpoint"), ("s3-region", "storage.s3.region"),
              ("s3-bucket", "storage.s3.bucket"), ("s3-prefix", "storage.s3.prefix"),
              ("s3-access-key", "storage.s3.access-key"),
              ("s3-secret-key", "storage.s3.secret-access-key"))


class AarCharm(ops.CharmBase):
    _stored = ops.StoredState()

    def __init__(self, framework):
        super().__init__(framework)
        # added: {fingerprint: {"unit", "relation", "role"}} of what this charm trusted
        # s3: storage.s3 in conf/main.yaml is the charm's (its options set it)
        # metrics, processes: the charm set that key (its option is not empty)
        self._stored.set_default(kind="", started=False, metrics=False, processes=False,
                                 s3=False, added={})
        self.registry = Registry(os.environ)
        self.workload = workload.Workload(SERVICE, os.environ)
        observe = self.framework.observe
        observe(self.on.install, self._on_install)
        observe(self.on.upgrade_charm, self._on_install)
        observe(self.on.config_changed, self._on_config_changed)
        observe(self.on.update_status, self._refresh)
        observe(self.on.remove, self._on_remove)
        for endpoint in aar_interface.ROLES:
            relation_events = self.on[endpoint]
            observe(relation_events.relation_joined, self._on_relation)
            observe(relation_events.relation_changed, self._on_relation)
            observe(relation_events.relation_departed, self._on_relation)
            observe(relation_events.relation_broken, self._on_relation)

    # -- program and service ------------------------------------------------

    def _on_install(self, event):
        try:
            resource = self.model.resources.fetch("aar")
            if resource.stat().st_size == 0:
                raise ops.ModelError("empty resource")  # a placeholder, as from charmhub
        except (ops.ModelError, NameError, OSError):
            if not self._stored.kind and not self.registry.installed():
                self.unit.status = ops.BlockedStatus(NO_RESOURCE)
                return
            resource = None  # nothing new attached: keep what runs
        if resource is not None:
            self.unit.status = ops.MaintenanceStatus("installing the registry")
            try:
                self._stored.kind = self.workload.install(resource)
            except workload.WorkloadError as error:
                self.unit.status = ops.BlockedStatus(str(error))
                return
        self._on_config_changed(event)

    def _listen(self):
        port = self.config["port"]
        any_address = "[::]" if self._bind_address().version == 6 else "0.0.0.0"
        return f"{any_address}:{port}"

    def _on_config_changed(self, event):
        port = self.config["port"]
        if not 0 < port < 65536:
            self.unit.status = ops.BlockedStatus(f"port {port} is not a port number (1-65535)")
            return
        try:
            wanted = {"listen": self._listen()}
            metrics = self.config["metrics"].strip()
            # An operator's own metrics line stays until the charm is told one.
            if metrics or self._stored.metrics:
                wanted["metrics"] = metrics
            processes = self.config["processes"].strip()
            if processes or self._stored.processes:      # likewise
                wanted["processes"] = processes
            wanted.update(self._storage())
            changed = self.registry.configure(wanted)
            self._stored.metrics = bool(metrics)
            self._stored.processes = bool(processes)
            self._stored.s3 = bool(self.config["s3-bucket"].strip())
            # `aar serve` reads conf/main.yaml at start, in the snap as from the unit.
            if self._stored.kind and (changed or isinstance(event, ops.UpgradeCharmEvent)
                                      or not self._stored.started):
                self.workload.start(self._stored.kind, ["serve"])
                self._stored.started = True
        except (RegistryError, workload.WorkloadError) as error:
            self.unit.status = ops.BlockedStatus(f"cannot configure or start the registry: {error}")
            return
        self.unit.set_ports(port)
        self._refresh(event)

    def _storage(self):
        """The storage.s3 keys the S3 options ask for. Without s3-bucket the
        charm removes the section it wrote, and leaves one an operator wrote
        by hand alone."""
        bucket = self.config["s3-bucket"].strip()
        if not bucket and not self._stored.s3:
            return {}
        wanted = {key: self.config[option].strip() if bucket else ""
                  for option, key in S3_OPTIONS}
        wanted["storage.s3.redirect"] = (str(self.config["s3-redirect"]).lower()
                                         if bucket else "")
        wanted["storage.s3.ca-file"] = self.registry.write_s3_ca(
            self.config["s3-ca"] if bucket else "")
        return wanted

    # -- relations ------------------------------------------------------------

    def _bind_address(self):
        binding = self.model.get_binding("client")
        address = binding.network.bind_address if binding else None
        # No address yet (Juju fills it in later): loopback until then.
        return address or ipaddress.ip_address("127.0.0.1")

    def _address(self):
        return self.config["location"].strip() or str(self._bind_address())

    def _publish(self, relations):
        certificate = self.registry.server_certificate()
        if certificate is None:
            return False
        data = aar_interface.registry_databag(certificate, self._address(), self.config["port"])
        for relation in relations:
            relation.data[self.unit].update(data)
        return True

    def _on_relation(self, event):
        self._refresh(event)

    def _relations(self, event):
        """The live relations: a broken one is left out."""
        broken = event.relation.id if isinstance(event, ops.RelationBrokenEvent) else None
        return [relation for endpoint in aar_interface.ROLES
                for relation in self.model.relations[endpoint] if relation.id != broken]

    def _refresh(self, event):
        relations = self._relations(event)
        published = self._publish(relations)
        departing = getattr(event, "departing_unit", None)
        try:
            problems = self._reconcile(relations, departing)
            trusted = self.registry.trusted()
        except RegistryError as error:
            self.unit.status = ops.BlockedStatus(str(error))
            return
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            self.unit.status = ops.BlockedStatus(problems[0] + more)
        elif not published:
            self.unit.status = ops.WaitingStatus(NO_CERTIFICATE)
        else:
            roles = list(trusted.values())
            bucket = self.config["s3-bucket"].strip() if self._stored.s3 else ""
            self.unit.status = ops.ActiveStatus(SERVING.format(
                url=aar_interface.registry_url(self._address(), self.config["port"]),
                clients=roles.count("client"), publishers=roles.count("publisher"))
                + (IN_BUCKET.format(bucket=bucket) if bucket else ""))
        # Without its certificate the registry cannot tell the other side where
        # it is yet: this relation event comes back with the next hook.
        if not published and isinstance(event, (ops.RelationJoinedEvent,
                                                ops.RelationChangedEvent)):
            event.defer()

    def _wanted(self, relations, departing):
        """({fingerprint: (role, unit name, relation id, pem)}, conflicted, problems)."""
        wanted, conflicted, problems = {}, set(), []
        for relation in relations:
            endpoint = relation.name
            for unit in sorted(relation.units, key=lambda u: u.name):
                if unit == departing:
                    continue
                try:
                    node = aar_interface.parse_node(relation.data[unit])
                except aar_interface.InterfaceError as error:
                    problems.append(BAD_DATA.format(unit=unit.name, error=error))
                    continue
                if node is None:
                    continue
                if node.mode != endpoint:
                    problems.append(MODE_MISMATCH.format(unit=unit.name, mode=node.mode,
                                                         endpoint=endpoint))
                    continue
                previous = wanted.get(node.fingerprint)
                if previous and previous[0] != endpoint:
                    problems.append(BOTH_ROLES.format(unit=unit.name))
                    conflicted.add(node.fingerprint)
                    continue
                wanted[node.fingerprint] = (endpoint, unit.name, relation.id, node.certificate)
        for fingerprint in conflicted:
            wanted.pop(fingerprint, None)
        return wanted, conflicted, problems

    def _reconcile(self, relations, departing):
        wanted, conflicted, problems = self._wanted(relations, departing)
        added = self._stored.added
        trusted = self.registry.trusted()
        for fingerprint in list(added):
            if fingerprint in conflicted:
                continue
            want = wanted.get(fingerprint)
            if want is None or want[0] != added[fingerprint]["role"]:
                if fingerprint in trusted:
                    self.registry.remove(fingerprint)
                    logger.info("removed %s (%s)", fingerprint, added[fingerprint]["unit"])
                    del trusted[fingerprint]
                del added[fingerprint]
        revoked = None
        for fingerprint, (role, unit, relation_id, pem) in sorted(wanted.items()):
            have = trusted.get(fingerprint)
            short = fingerprint[:12]
            if have == role:
                continue  # trusted already: by this charm, or by hand (then left to the operator)
            if have is not None:
                problems.append(HAND_TRUSTED.format(unit=unit, short=short, have=have, role=role))
                continue
            if revoked is None:
                revoked = self.registry.revoked()
            if fingerprint in revoked:
                problems.append(REVOKED.format(unit=unit, short=short))
                continue
            self.registry.trust(pem, role)
            added[fingerprint] = {"unit": unit, "relation": relation_id, "role": role}
            logger.info("trusted %s as %s (%s)", fingerprint, role, unit)
        return problems

    def _on_remove(self, _event):
        """The unit goes: stop the service; the data directory stays (it is
        the operator's to delete, and a redeploy picks it up)."""
        if self._stored.kind:
            try:
                self.workload.stop(self._stored.kind)
            except workload.WorkloadError as error:
                logger.warning("%s", error)


if __name__ == "__main__":  # pragma: no cover
    ops.main(AarCharm)
