"""deploy/ (issue 4): every manifest parses, and its ports, probes, paths and settings agree with
the server's Config and with each other. (No container engine here: nothing is run.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import bench_tracing  # server/benchmarks (conftest.py puts it on sys.path)
import pytest
import yaml
from server_testkit import ROOT

from callqos.server import app
from callqos.server.config import SETTINGS, Config, load

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
REPLICAS = DEPLOY / "k8s-replicas"
MANIFESTS = sorted([*DEPLOY.glob("*.yaml"), *K8S.glob("*.yaml"), *REPLICAS.glob("*.yaml")])


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (`!override`, `!reset`), read as their plain values."""


ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_sequence(node))  # type: ignore[arg-type]
ComposeLoader.add_constructor("!reset", lambda loader, node: [])


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=ComposeLoader) if doc is not None]


def k8s(kind: str) -> dict[str, Any]:
    (found,) = [d for p in K8S.glob("*.yaml") for d in documents(p) if d.get("kind") == kind]
    return found


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def check_callqos_env(env: dict[str, str]) -> None:
    """CALLQOS_* variables must name Config fields (a typo would be silently ignored)."""
    for key in env:
        if key.startswith("CALLQOS_") and key != "CALLQOS_CONFIG":
            assert key.removeprefix("CALLQOS_").lower() in SETTINGS, key


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path) -> None:
    assert documents(path)


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = documents(K8S / "kustomization.yaml")
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.fixture
def pod_config(tmp_path: Path) -> Config:
    """The ConfigMap's TOML, loaded by the server's own loader (unknown keys fail)."""
    toml = tmp_path / "callqos.toml"
    toml.write_text(k8s("ConfigMap")["data"]["callqos.toml"])
    return load(toml, env={})


def container() -> dict[str, Any]:
    (only,) = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def test_configmap_is_a_valid_server_config(pod_config: Config) -> None:
    assert pod_config.listen == "0.0.0.0:50051"  # all interfaces inside the pod
    # ... so it is served over TLS, to authenticated callers only.
    assert pod_config.tls_cert and pod_config.tls_key and pod_config.authenticators
    assert not pod_config.insecure_allow_unauthenticated and not pod_config.insecure_allow_plaintext
    assert pod_config.storage == "sqlite" and pod_config.metrics_listen
    text = k8s("ConfigMap")["data"]["callqos.toml"]
    assert set(tomllib.loads(text)) <= set(SETTINGS)
    # Anything the file leaves out is the embedded default.
    assert pod_config.event_retention_count == Config().event_retention_count


def test_deployment_ports_probes_and_volumes_agree_with_the_config(pod_config: Config) -> None:
    spec = k8s("Deployment")["spec"]
    pod = spec["template"]["spec"]
    main = container()
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["grpc"] == port_of(pod_config.listen)
    assert ports["metrics"] == port_of(pod_config.metrics_listen)
    assert ports["health"] == port_of(pod_config.health_listen)
    # Native gRPC probes on the plaintext health port (the kubelet's gRPC probe has no TLS):
    # overall health, and the API service for readiness.
    assert main["livenessProbe"]["grpc"] == {"port": ports["health"], "service": ""}
    assert main["readinessProbe"]["grpc"] == {"port": ports["health"], "service": app.SERVICE_NAME}
    # The config file the server is told to read is the mounted ConfigMap key.
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = Path(main["args"][main["args"].index("--config") + 1])
    assert config_path.parent == Path(mounts["config"])
    assert volumes["config"]["configMap"]["name"] == k8s("ConfigMap")["metadata"]["name"]
    assert config_path.name in k8s("ConfigMap")["data"]
    # The TLS files are the mounted secret.
    assert pod_config.tls_cert is not None and pod_config.tls_key is not None
    assert pod_config.tls_cert.parent == pod_config.tls_key.parent == Path(mounts["tls"])
    assert volumes["tls"]["secret"]["secretName"] == "callqos-tls"
    assert {pod_config.tls_cert.name, pod_config.tls_key.name} == {"tls.crt", "tls.key"}  # a kubernetes.io/tls secret
    # The SQLite directory is the persistent volume; one writer, so one replica, recreated.
    assert Path(mounts["data"]) == pod_config.data_dir
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == k8s("PersistentVolumeClaim")["metadata"]["name"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    # Kubernetes must not SIGKILL before the server's own graceful stop has finished.
    assert pod["terminationGracePeriodSeconds"] > pod_config.shutdown_grace_seconds
    assert pod["terminationGracePeriodSeconds"] > pod_config.shutdown_timeout_seconds
    env = {e["name"]: e["value"] for e in main["env"]}
    check_callqos_env(env)
    assert env["OTEL_PYTHON_GRPC_EXCLUDED_SERVICES"] == "grpc.health.v1.Health"
    # `make bench` judges the tracing-overhead target on the sampling production runs with.
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert float(env["OTEL_TRACES_SAMPLER_ARG"]) == bench_tracing.PRODUCTION_SAMPLING


# Pod Security Standard "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards).
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def test_the_pod_meets_the_restricted_pod_security_standard() -> None:
    check_restricted(k8s("Deployment")["spec"]["template"]["spec"])


def check_restricted(pod: dict[str, Any]) -> None:
    pod_context = pod.get("securityContext", {})
    # Baseline: nothing privileged, no host namespaces, ports or paths.
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    for volume in pod["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, volume
    for each in [*pod["containers"], *pod.get("initContainers", []), *pod.get("ephemeralContainers", [])]:
        context = each.get("securityContext", {})
        assert not context.get("privileged"), each["name"]
        assert not any("hostPort" in port for port in each.get("ports", [])), each["name"]
        assert context.get("allowPrivilegeEscalation") is False, each["name"]
        assert "ALL" in context.get("capabilities", {}).get("drop", []), each["name"]
        assert set(context.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, each["name"]
        assert (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")) is True, each["name"]
        assert context.get("runAsUser", pod_context.get("runAsUser")) != 0, each["name"]
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), each["name"]
        assert context.get("readOnlyRootFilesystem") is True, each["name"]  # beyond restricted: ours
        # Non-root without capabilities cannot bind below 1024.
        assert all(port["containerPort"] > 1024 for port in each.get("ports", [])), each["name"]
    # Its own ServiceAccount, with no API token mounted.
    assert pod["serviceAccountName"] == k8s("ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False


def test_the_network_policy_admits_clients_to_the_api_only() -> None:
    policy = k8s("NetworkPolicy")["spec"]
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    opened = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert opened == {"grpc", "metrics"}  # not the plaintext health port
    names = {p["name"] for p in container()["ports"]}
    assert opened <= names


def test_service_targets_the_container_ports() -> None:
    service = k8s("Service")
    names = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    assert service["spec"]["selector"].items() <= k8s("Deployment")["spec"]["template"]["metadata"]["labels"].items()


def test_dockerfile_installs_the_client_and_the_server_distributions() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    (install,) = re.findall(r"^RUN pip install (.*?) &&", text, re.M)
    args = [arg.strip("'") for arg in install.split() if not arg.startswith("-")]
    dirs = [arg.removeprefix("./").partition("[")[0] for arg in args]
    # The server with the PostgreSQL driver, so that the one image also runs as replicas.
    assert "./server[postgresql]" in args
    projects = {d: tomllib.loads((ROOT / d / "pyproject.toml").read_text())["project"] for d in dirs}
    by_name = {project["name"]: project for project in projects.values()}
    # The server and the client it is pinned to, built from the tree; not the suite.
    assert set(by_name) == {"callqos", "callqos-server"}
    assert f"callqos=={by_name['callqos']['version']}" in by_name["callqos-server"]["dependencies"]
    copied = re.findall(r"^COPY (\S+) ", text, re.M)
    assert set(dirs) <= set(copied)
    # `callqos serve`: the client's command, with the subcommand the server registers for it.
    assert 'ENTRYPOINT ["callqos", "serve"]' in text
    assert "callqos" in by_name["callqos"]["scripts"]
    assert "serve" in by_name["callqos-server"]["entry-points"]["callqos.cli"]


def test_dockerfile_runs_the_server_on_all_interfaces() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    cmd = yaml.safe_load(re.search(r"^CMD (.*)$", text, re.M).group(1))  # a JSON array
    flags = dict(zip(cmd[::2], cmd[1::2], strict=True))
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()}
    assert port_of(flags["--listen"]) in exposed and flags["--listen"].startswith("0.0.0.0:")
    assert port_of(k8s("ConfigMap")["data"]["callqos.toml"].split('metrics_listen = "')[1].split('"')[0]) in exposed
    assert re.search(rf"^VOLUME \[\"{re.escape(flags['--data-dir'])}\"\]", text, re.M)
    check_callqos_env(dict(re.findall(r"(CALLQOS_\w+)=(\S+)", text)))


def test_compose_wires_server_collector_and_trace_viewer() -> None:
    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"callqos", "otel-collector", "jaeger"} <= set(services)
    server = services["callqos"]
    env = {k: str(v) for k, v in server["environment"].items()}
    check_callqos_env(env)
    config = load(env=env)
    # Published on loopback only, on the ports the server listens on.
    published = {int(p.split(":")[2]): p for p in server["ports"]}
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    assert port_of(config.listen) in published and port_of(config.metrics_listen) in published
    # TLS with mTLS and tokens, with files the certs service makes before the server starts.
    assert config.tls_cert and config.tls_client_ca and set(config.authenticators) == {"jwt", "mtls"}
    assert server["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert "callqos.server.testpki" in " ".join(services["certs"]["entrypoint"])
    assert server["read_only"] is True and server["cap_drop"] == ["ALL"]
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    endpoint = urlparse(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "otel-collector"
    (collector,) = documents(DEPLOY / "otel-collector.yaml")
    assert port_of(collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]) == endpoint.port
    mounted = {v.split(":")[0]: v.split(":")[1] for v in services["otel-collector"]["volumes"]}
    assert mounted["./otel-collector.yaml"] in " ".join(services["otel-collector"]["command"])
    assert server["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert "/var/lib/callqos" in " ".join(server["volumes"]) and config.data_dir == Path("/var/lib/callqos")


def test_collector_pipelines_use_defined_components_and_reach_jaeger() -> None:
    (collector,) = documents(DEPLOY / "otel-collector.yaml")
    for name, pipeline in collector["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(collector[kind]), (name, kind)
    assert "otlp/jaeger" in collector["service"]["pipelines"]["traces"]["exporters"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0] == "jaeger"


def test_callqos_commands_in_the_deploy_files_parse() -> None:
    """A `callqos …` command quoted in a deploy file's comments is one the CLI accepts (the compose
    file once showed `callqos make --destination`, a flag that never existed)."""
    import shlex

    from callqos.cli.main import build_parser

    commands = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml", "") and "release" not in path.parts:
            for line in path.read_text(errors="replace").splitlines():
                comment = line.strip().lstrip("#").strip()
                if line.strip().startswith("#") and re.match(r"callqos [a-z][a-z-]+( |$)", comment):
                    commands.append((path.name, comment.split("  (")[0].split("   ")[0]))
    assert commands, "no callqos command found in the deploy files' comments"
    parser = build_parser()
    for name, command in commands:
        argv = shlex.split(command)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            raise AssertionError(f"{name}: `{command}` does not parse") from exit_


# -- several replicas on PostgreSQL (deploy/k8s-replicas, deploy/compose.replicas.yaml) ------------
@pytest.fixture(scope="module")
def replicas() -> list[dict[str, Any]]:
    """The overlay as Kubernetes gets it (`kubectl kustomize`, which is kustomize itself)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: deploy/k8s-replicas cannot be rendered here")
    rendered = subprocess.run([kubectl, "kustomize", str(REPLICAS)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def replica_kind(rendered: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered if doc["kind"] == kind]


def test_the_replicas_overlay_runs_several_stateless_replicas_on_the_database_from_a_secret(
    replicas: list[dict[str, Any]], tmp_path: Path
) -> None:
    (deployment,) = replica_kind(replicas, "Deployment")
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    assert spec["replicas"] >= 3 and spec["strategy"]["type"] == "RollingUpdate"
    # Nothing on a volume: no PVC, no volume but the config, the TLS secret and /tmp.
    assert not replica_kind(replicas, "PersistentVolumeClaim")
    assert {volume["name"] for volume in pod["volumes"]} == {"config", "tls", "tmp"}
    assert all("persistentVolumeClaim" not in volume for volume in pod["volumes"])
    # storage = "postgresql" over the ConfigMap's file, the DSN from a Secret and nowhere else.
    env = {each["name"]: each for each in main["env"]}
    assert env["CALLQOS_STORAGE"]["value"] == "postgresql"
    assert "value" not in env["CALLQOS_DATABASE_URL"]
    assert env["CALLQOS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "callqos-database", "key": "url"}
    (configmap,) = replica_kind(replicas, "ConfigMap")
    assert "database_url" not in configmap["data"]["callqos.toml"]
    toml = tmp_path / "callqos.toml"
    toml.write_text(configmap["data"]["callqos.toml"])
    variables = {"CALLQOS_STORAGE": "postgresql", "CALLQOS_DATABASE_URL": "postgresql://callqos@db/callqos"}
    config = load(toml, env=variables)
    assert config.storage == "postgresql" and config.database_url
    check_callqos_env({name: "" for name in env})
    # Readiness asks for the API service, which a replica that cannot reach the database
    # reports NOT_SERVING (app.Running.set_serving); liveness for the whole server, which it does not.
    assert main["readinessProbe"]["grpc"]["service"] == app.SERVICE_NAME
    assert main["livenessProbe"]["grpc"]["service"] == ""
    check_restricted(pod)
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_timeout_seconds
    # Spread over nodes, and disrupted one at a time, so that some replicas always serve.
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels(deployment).items()
    (budget,) = replica_kind(replicas, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    assert 0 < budget["spec"]["maxUnavailable"] < spec["replicas"]
    # The network policy lets the replicas reach the database.
    (policy,) = replica_kind(replicas, "NetworkPolicy")
    assert {"port": 5432, "protocol": "TCP"} in [port for rule in policy["spec"]["egress"] for port in rule["ports"]]


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_compose_replicas_share_one_postgres_and_publish_each_on_its_own_loopback_port() -> None:
    (base,) = documents(DEPLOY / "compose.yaml")
    (over,) = documents(DEPLOY / "compose.replicas.yaml")
    services = over["services"]
    replicas = [name for name in services if name.startswith("callqos")]
    assert len(replicas) == 3
    postgres = services["postgres"]
    assert "ports" not in postgres  # reached by the replicas only
    published = [base["services"]["callqos"]["ports"][0]]
    for name in replicas:
        replica = services[name]
        env = {k: str(v) for k, v in {**base["services"]["callqos"]["environment"], **replica["environment"]}.items()}
        check_callqos_env(env)
        config = load(env=env)
        assert config.storage == "postgresql"
        assert urlparse(config.database_url).hostname == "postgres"
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        if name != "callqos":
            assert replica["extends"] == {"file": "compose.yaml", "service": "callqos"}
            published.extend(replica["ports"])
    assert all(port.startswith("127.0.0.1:") for port in published)
    assert len({port.split(":")[1] for port in published}) == 3  # one host port each
    dsn = urlparse(services["callqos"]["environment"]["CALLQOS_DATABASE_URL"])
    database = postgres["environment"]
    assert (dsn.username, dsn.password, dsn.path) == (
        database["POSTGRES_USER"],
        database["POSTGRES_PASSWORD"],
        "/" + database["POSTGRES_DB"],
    )
