"""The charms against Juju itself.

Two parts. The first needs no controller: it applies Juju's rule for
completing `juju add-relation A B` (every pair of endpoints with the same
interface and opposite roles; ambiguous when more than one pair is left) to
the two charmcraft.yaml files, so the seeds' commands are checked as typed.

The second deploys the packed charms on a real controller with jubilant,
relates them as the seeds do, including across models, and checks
`ams-sync config show` on the AMS unit. It is skipped, with the reason, where
there is no `juju`, no reachable controller or no `charmcraft`: the case on
the machines these tests usually run on.
"""
import json
import os
import pathlib
import shutil
import subprocess

import pytest

yaml = pytest.importorskip("yaml")  # comes with ops, which the charm tests pin

CHARMS = pathlib.Path(__file__).resolve().parent.parent / "charms"


def endpoints(charm, app):
    meta = yaml.safe_load((CHARMS / charm / "charmcraft.yaml").read_text())
    found = []
    for role in ("provides", "requires"):
        for name, spec in (meta.get(role) or {}).items():
            found.append((app, name, spec["interface"], role))
    return found


APPS = {"aar": endpoints("aar", "aar"), "ams": endpoints("ams-sync", "ams")}


def infer(first, second, apps=APPS):
    """The relations `juju add-relation first second` could mean (Juju's
    InferEndpoints for two names, without the implicit juju-info ones)."""
    def candidates(name):
        app, _, endpoint = name.partition(":")
        return [e for e in apps[app] if not endpoint or e[1] == endpoint]
    return sorted(f"{a[0]}:{a[1]} {b[0]}:{b[1]}" for a in candidates(first) for b in candidates(second)
                  if a[2] == b[2] and {a[3], b[3]} == {"provides", "requires"})


def test_the_seeds_add_relation_commands_name_one_relation_each():
    assert infer("aar:client", "ams:registry-client") == ["aar:client ams:registry-client"]
    assert infer("aar:publisher", "ams:registry-publisher") == ["aar:publisher ams:registry-publisher"]


def test_every_endpoint_speaks_the_aar_interface():
    assert {e[2] for e in APPS["aar"] + APPS["ams"]} == {"aar"}


def test_cross_model_relate_needs_the_endpoint_named():
    """An offer of aar:client is a remote application with that one endpoint.
    Both ams endpoints speak `aar`, as the real charms' do, so Juju cannot pick
    for `juju relate ams <offer>` and says so; `ams:registry-client` picks."""
    offered = dict(APPS, aar=[e for e in APPS["aar"] if e[1] == "client"])
    assert infer("ams", "aar", offered) == ["ams:registry-client aar:client",
                                            "ams:registry-publisher aar:client"]
    assert infer("ams:registry-client", "aar", offered) == ["ams:registry-client aar:client"]


# -- a real controller --------------------------------------------------------------

def _controller_reason():
    if shutil.which("juju") is None:
        return "no juju command here: deploying the charms needs a Juju controller"
    try:
        out = subprocess.run(["juju", "controllers", "--format", "json"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"juju controllers failed: {error}"
    if out.returncode != 0 or not json.loads(out.stdout or "{}").get("current-controller"):
        return "no Juju controller is reachable (juju controllers shows none current)"
    if shutil.which("charmcraft") is None:
        return "no charmcraft here: packing the charms needs it"
    return None


def _pack(charm, tmp_path):
    subprocess.run(["charmcraft", "pack", "--project-dir", str(CHARMS / charm)],
                   cwd=tmp_path, check=True, timeout=3600)
    return next(tmp_path.glob(f"{charm}_*.charm"))


NO_CONTROLLER = _controller_reason()


@pytest.mark.skipif(NO_CONTROLLER is not None, reason=str(NO_CONTROLLER))
def test_deploy_and_relate_on_a_controller(tmp_path):
    jubilant = pytest.importorskip("jubilant")
    resource = os.environ.get("AAR_CHARM_RESOURCE") or str(
        pathlib.Path(__file__).resolve().parent.parent / "dist/aar.pyz")
    aar_charm, ams_charm = _pack("aar", tmp_path), _pack("ams-sync", tmp_path)
    with jubilant.temp_model() as registry_model, jubilant.temp_model() as ams_model:
        registry_model.deploy(aar_charm, "aar", resources={"aar": resource})
        ams_model.deploy(ams_charm, "ams", resources={"ams-sync": resource})
        ams_model.deploy(ams_charm, "ams-pub", resources={"ams-sync": resource})
        registry_model.wait(jubilant.all_agents_idle, timeout=1800)
        # The seeds' cross-model steps, with the endpoint named (see above).
        registry_model.offer("aar", endpoint="client")
        registry_model.offer("aar", endpoint="publisher", name="aar-publisher")
        ams_model.integrate("ams:registry-client", f"{registry_model.model}.aar")
        ams_model.integrate("ams-pub:registry-publisher", f"{registry_model.model}.aar-publisher")
        ams_model.wait(jubilant.all_active, timeout=1800)
        registry_model.wait(jubilant.all_active, timeout=1800)
        shown = ams_model.ssh("ams/0", "sudo ams-sync config show")
        assert 'registry.mode: "pull"' in shown and "registry.url: \"https://" in shown
        status = registry_model.status().apps["aar"].units["aar/0"].workload_status.message
        assert "trusts 1 client(s), 1 publisher(s)" in status
