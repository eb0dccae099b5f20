"""Container launchers without a container engine: config.json generation,
cgroup paths, podman/docker argv, engine detection and choice, rootfs
caching, the peer config key. (Real runc runs: test_container.py.)"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nanomesh.config import build_config
from nanomesh.errors import ConfigError
from nanomesh.runtime.container import (
    ContainerLauncher,
    DockerLauncher,
    PodmanLauncher,
    RuncLauncher,
    choose_container_launcher,
    content_key,
    detect_engines,
    engine_run_argv,
    import_command,
    imported_image_name,
    instance_unified_path,
    materialise_rootfs,
    pick_engine,
    probe_engine,
)
from nanomesh.runtime.instance_spec import InstanceSpec, Limits, instance_spec_from
from nanomesh.runtime.launch import LaunchContext, LaunchError
from nanomesh.runtime.oci import (
    DEFAULT_PATH,
    cgroups_path,
    container_id,
    oci_config,
    resources,
)

ENV = {"PATH": "/host/bin", "HOME": "/root", "SECRET_OF_THE_DAEMON": "x",
       "NANOMESH_SERVICE": "web", "NANOMESH_INSTANCE": "web/0", "NANOMESH_HOST": "127.0.53.9",
       "NANOMESH_PORT_HTTP": "8080", "NANOMESH_PORT": "8080", "NANOMESH_INSTANCE_TOKEN": "tok",
       "GREETING": "hi"}


def spec(**doc: Any) -> InstanceSpec:
    base: dict[str, Any] = {"name": "web", "kind": "container",
                            "container": {"rootfs": "rootfs"},
                            "run": {"command": ["/bin/sh", "-c", "echo hi"],
                                    "env": {"GREETING": "hi"}}}
    base.update(doc)
    return instance_spec_from(base)


# -- config.json ------------------------------------------------------------------------------


def test_config_runs_the_command_with_the_env_contract_only() -> None:
    config = oci_config(spec(), env=ENV, rootfs=Path("/state/rootfs"), cgroups="a/b")
    process = config["process"]
    assert process["args"] == ["/bin/sh", "-c", "echo hi"]
    env = dict(item.split("=", 1) for item in process["env"])
    assert env["NANOMESH_PORT_HTTP"] == "8080" and env["NANOMESH_HOST"] == "127.0.53.9"
    assert env["NANOMESH_INSTANCE_TOKEN"] == "tok" and env["GREETING"] == "hi"
    assert env["PATH"] == DEFAULT_PATH  # not the host's
    assert "SECRET_OF_THE_DAEMON" not in env and env["HOME"] == "/"
    assert process["terminal"] is False and process["cwd"] == "/"
    assert config["root"] == {"path": "/state/rootfs", "readonly": False}


def test_config_namespaces_mounts_and_cgroups() -> None:
    config = oci_config(spec(), env=ENV, rootfs=Path("/r"), cgroups="x/nm-web-0",
                        host_files=["/etc/hosts"])
    linux = config["linux"]
    assert sorted(n["type"] for n in linux["namespaces"]) == ["ipc", "mount", "pid", "uts"]
    assert linux["cgroupsPath"] == "x/nm-web-0"
    by_dest = {m["destination"]: m for m in config["mounts"]}
    assert by_dest["/proc"]["type"] == "proc"
    assert "ro" in by_dest["/sys"]["options"]
    assert by_dest["/tmp"]["type"] == "tmpfs"
    assert by_dest["/dev"]["type"] == "tmpfs"
    assert by_dest["/etc/hosts"]["type"] == "bind" and "ro" in by_dest["/etc/hosts"]["options"]
    assert config["hostname"] == "web"


@pytest.mark.parametrize(("cwd", "expected"), [(None, "/"), ("/srv", "/srv"), ("sub", "/")])
def test_config_cwd(cwd: str | None, expected: str) -> None:
    s = spec(run={"command": ["true"], "cwd": cwd})
    assert oci_config(s, env={}, rootfs=Path("/r"), cgroups="c")["process"]["cwd"] == expected


@pytest.mark.parametrize(("limits", "expected"), [
    (Limits(), {}),
    (Limits(memory_mb=32), {"memory": {"limit": 32 << 20}}),
    (Limits(cpu=0.5), {"cpu": {"quota": 50_000, "period": 100_000}}),
    (Limits(cpu=0.001 + 0.009), {"cpu": {"quota": 1_000, "period": 100_000}}),
    (Limits(pids=64), {"pids": {"limit": 64}}),
    (Limits(memory_mb=8, cpu=2.0, pids=5), {"memory": {"limit": 8 << 20},
                                            "cpu": {"quota": 200_000, "period": 100_000},
                                            "pids": {"limit": 5}}),
])
def test_resources_from_limits(limits: Limits, expected: dict[str, Any]) -> None:
    out = resources(limits)
    assert out.pop("devices") == [{"allow": False, "access": "rwm"}]
    assert out == expected


def test_config_without_command_is_refused() -> None:
    with pytest.raises(ValueError, match=r"run\.command"):
        oci_config(spec(run={}), env={}, rootfs=Path("/r"), cgroups="c")


@pytest.mark.parametrize(("layout", "in_instance", "unified", "expected"), [
    ("hybrid", True, "own/nanomesh/p.1/web-0", "own/nanomesh/p.1/web-0/nm-web-0"),
    ("hybrid", True, None, "nanomesh-runc/nm-web-0"),
    ("hybrid", False, None, "nanomesh-runc/nm-web-0"),
    ("unified", True, "/nanomesh/p.1/web-0/", "/nanomesh/p.1/web-0/nm-web-0"),
    ("unified", False, None, "nanomesh-runc/nm-web-0"),
    ("legacy", True, None, "nm-web-0"),
    ("legacy", False, None, "nanomesh-runc/nm-web-0"),
    ("none", False, None, "nanomesh-runc/nm-web-0"),
])
def test_cgroups_path(layout: Any, in_instance: bool, unified: str | None,
                      expected: str) -> None:
    assert cgroups_path("nm-web-0", layout, in_instance=in_instance,
                        instance_unified=unified) == expected


def test_instance_unified_path_from_the_driver_cgroup() -> None:
    class Cg:
        dirs = {"memory": Path("/sys/fs/cgroup/memory/a/web-0"),
                "unified": Path("/sys/fs/cgroup/unified/a/nanomesh/p.1/web-0")}
    mount = Path("/sys/fs/cgroup/unified")
    assert instance_unified_path(Cg(), mount) == "a/nanomesh/p.1/web-0"  # type: ignore[arg-type]
    assert instance_unified_path(None, mount) is None
    assert instance_unified_path(Cg(), None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("iid", "peer", "expected"), [
    ("web/0", "", "nm-web-0"),
    ("web/3", "pd1", "nm-web-3-pd1"),
    ("web/0", "lab peer #2", "nm-web-0-lab-peer-2"),
    ("we b/0", "ü", "nm-we-b-0"),
])
def test_container_id(iid: str, peer: str, expected: str) -> None:
    assert container_id(iid, peer) == expected


def test_long_container_ids_stay_unique_and_short() -> None:
    a, b = container_id("s" * 200 + "/0"), container_id("s" * 200 + "/1")
    assert a != b and len(a) <= 96 and len(b) <= 96


# -- podman / docker argv ---------------------------------------------------------------------


def test_engine_run_argv() -> None:
    s = spec(container={"image": "docker.io/library/busybox:1.36"},
             run={"command": ["httpd", "-f"], "env": {"GREETING": "hi"}, "cwd": "/www"},
             limits={"memory_mb": 32, "cpu": 0.5, "pids": 16})
    argv = engine_run_argv("podman", s, cid="nm-web-0-p", image="busybox:1.36", env=ENV,
                           peer="p", iid="web/0")
    assert argv[:2] == ("podman", "run")
    joined = " ".join(argv)
    for part in ("--rm", "--name nm-web-0-p", "--network host", "--sig-proxy=true", "--replace",
                 "--memory 32m", "--cpus 0.5", "--pids-limit 16", "--workdir /www",
                 "--env NANOMESH_PORT_HTTP", "--env NANOMESH_INSTANCE_TOKEN", "--env GREETING",
                 "--label nanomesh.peer=p", "--label nanomesh.instance=web/0"):
        assert part in joined
    assert "tok" not in joined  # values travel in the environment, not in ps
    assert "SECRET_OF_THE_DAEMON" not in joined and "--env PATH" not in joined
    assert argv[-3:] == ("busybox:1.36", "httpd", "-f")


def test_docker_argv_has_no_replace_and_no_limits_when_none() -> None:
    argv = engine_run_argv("docker", spec(container={"image": "busybox"}, run={}),
                           cid="c", image="busybox", env={})
    assert "--replace" not in argv and "--memory" not in argv and "--workdir" not in argv
    assert argv[-1] == "busybox"


def test_import_names_and_commands(tmp_path: Path) -> None:
    assert imported_image_name("podman", "Web App", "ab" * 32) == \
        "localhost/nanomesh/web-app:abababababababab"
    assert imported_image_name("docker", "web", "cd" * 32) == "nanomesh/web:cdcdcdcdcdcdcdcd"
    folder = import_command("podman", tmp_path, "img")
    assert folder[:2] == ("sh", "-c") and "podman import - img" in folder[2]
    tarball = tmp_path / "r.tar"
    tarball.write_bytes(b"")
    assert import_command("docker", tarball, "img") == ("docker", "import", str(tarball), "img")


async def test_engine_launcher_for_an_image(tmp_path: Path) -> None:
    launcher = PodmanLauncher(peer="p")
    ctx = LaunchContext(iid="web/0", env=ENV, workdir=None, state_dir=tmp_path,
                        host_ip="127.0.53.9")
    launch = await launcher.prepare(spec(container={"image": "busybox"}, run={}), ctx)
    assert launch.argv[:2] == ("podman", "run") and launch.argv[-1] == "busybox"
    assert launch.cleanup == ("podman", "rm", "-f", "nm-web-0-p")
    assert launch.env["NANOMESH_INSTANCE_TOKEN"] == "tok" and launch.enforces_limits


async def test_imported_rootfs_needs_a_command(tmp_path: Path) -> None:
    ctx = LaunchContext(iid="web/0", env={}, workdir=tmp_path, state_dir=tmp_path,
                        host_ip="127.0.53.9")
    with pytest.raises(LaunchError, match=r"run\.command"):
        await DockerLauncher().prepare(spec(run={}), ctx)


# -- choosing an engine -----------------------------------------------------------------------

ROOTFS = spec()
IMAGE = spec(container={"image": "busybox"}, run={})


@pytest.mark.parametrize(("available", "preference", "svc", "expected"), [
    (["runc", "podman", "docker"], "auto", ROOTFS, "runc"),
    (["runc", "podman", "docker"], "auto", IMAGE, "podman"),
    (["runc", "docker"], "auto", IMAGE, "docker"),
    (["podman"], "auto", ROOTFS, "podman"),
    (["docker"], "auto", ROOTFS, "docker"),
    (["runc", "podman"], "podman", ROOTFS, "podman"),
    (["runc", "docker"], "docker", IMAGE, "docker"),
])
def test_pick_engine(available: list[str], preference: str, svc: InstanceSpec,
                     expected: str) -> None:
    assert pick_engine(available, preference, svc) == expected


@pytest.mark.parametrize(("available", "preference", "svc", "message"), [
    (["runc"], "auto", IMAGE, "image services need podman or docker; this peer has: runc"),
    ([], "auto", IMAGE, "image services need podman or docker; this peer has: none"),
    ([], "auto", ROOTFS, "no container engine"),
    (["runc"], "podman", ROOTFS, "'podman' in the peer config, but podman does not work here; "
                                 "this peer has: runc"),
    (["runc", "podman"], "runc", IMAGE, "image services need podman or docker"),
])
def test_pick_engine_refuses_what_cannot_work(available: list[str], preference: str,
                                              svc: InstanceSpec, message: str) -> None:
    with pytest.raises(LaunchError, match=message.replace(".", r"\.")):
        pick_engine(available, preference, svc)


def test_choose_and_describe(tmp_path: Path) -> None:
    assert choose_container_launcher(state_root=tmp_path, engines=[]) is None
    launcher = choose_container_launcher(state_root=tmp_path, peer="p", engines=["runc"])
    assert isinstance(launcher, ContainerLauncher)
    assert launcher.describe() == {"container_engines": ["runc"]}
    assert launcher.engine == "runc"
    assert isinstance(launcher.pick(ROOTFS), RuncLauncher)
    with pytest.raises(LaunchError, match="this peer has: runc"):
        launcher.pick(IMAGE)
    both = choose_container_launcher(state_root=tmp_path, engines=["runc", "podman"])
    assert both is not None and both.engine == "runc/podman"
    assert isinstance(both.pick(IMAGE), PodmanLauncher)
    asked = choose_container_launcher("docker", state_root=tmp_path, engines=["runc"])
    assert asked is not None
    with pytest.raises(LaunchError, match="does not work here"):
        asked.pick(ROOTFS)
    with pytest.raises(ValueError, match="container_engine"):
        choose_container_launcher("lxc", state_root=tmp_path, engines=[])


def fake_run(results: dict[str, int]) -> Any:
    def run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        if results.get(argv[0]) is None:
            raise subprocess.TimeoutExpired(list(argv), timeout)
        return subprocess.CompletedProcess(list(argv), results[argv[0]], b"",
                                           b"Cannot connect to the Docker daemon")
    return run


def test_detection_needs_a_working_engine_not_just_a_binary() -> None:
    installed = {"runc": "/usr/sbin/runc", "docker": "/usr/local/bin/docker",
                 "podman": "/usr/bin/podman"}
    run = fake_run({"runc": 0, "docker": 1})  # podman: times out
    assert detect_engines(which=installed.get, run=run) == (
        ["runc"] if os.geteuid() == 0 else [])
    assert "Cannot connect" in (probe_engine("docker", which=installed.get, run=run) or "")
    assert "did not answer" in (probe_engine("podman", which=installed.get, run=run) or "")
    assert probe_engine("runc", which=installed.get, run=run, euid=1000) == \
        "needs root (rootless runc is not supported)"
    assert probe_engine("runc", which={}.get, run=run) == "not installed"
    both = fake_run({"runc": 0, "podman": 0, "docker": 0})
    assert detect_engines(which=installed.get, run=both)[-2:] == ["podman", "docker"]


# -- rootfs -----------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin" / "sh").symlink_to("/bin/tool")
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("hello\n")


def test_folder_rootfs_is_copied_once_per_content(tmp_path: Path) -> None:
    src, state = tmp_path / "bundle" / "rootfs", tmp_path / "state"
    make_tree(src)
    state.mkdir()
    first = materialise_rootfs(src, state)
    assert (first / "etc" / "motd").read_text() == "hello\n"
    assert os.readlink(first / "bin" / "sh") == "/bin/tool"
    (first / "etc" / "written-by-the-service").write_text("state")
    assert materialise_rootfs(src, state) == first  # reused: the write survives a restart
    assert (first / "etc" / "written-by-the-service").exists()
    assert not (src / "etc" / "written-by-the-service").exists()  # the bundle is untouched
    (src / "etc" / "motd").write_text("new version\n")
    second = materialise_rootfs(src, state)
    assert second != first and not first.exists()
    assert (second / "etc" / "motd").read_text() == "new version\n"


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_tarball_rootfs_is_unpacked_once(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / "tree"
    make_tree(src)
    tarball = tmp_path / f"rootfs{suffix}"
    with tarfile.open(tarball, "w:gz" if suffix.endswith("gz") else "w") as tar:
        tar.add(src, arcname=".")
    state = tmp_path / "state"
    state.mkdir()
    out = materialise_rootfs(tarball, state)
    assert (out / "etc" / "motd").read_text() == "hello\n"
    assert out.name.endswith(content_key(tarball)[:16])
    mtime = out.stat().st_mtime_ns
    assert materialise_rootfs(tarball, state) == out and out.stat().st_mtime_ns == mtime


def test_a_corrupt_tarball_is_a_launch_error(tmp_path: Path) -> None:
    bad = tmp_path / "rootfs.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(LaunchError, match="cannot unpack rootfs"):
        materialise_rootfs(bad, tmp_path)
    assert not list(tmp_path.glob("*.partial"))


async def test_runc_prepare_writes_the_bundle(tmp_path: Path) -> None:
    make_tree(tmp_path / "bundle" / "rootfs")
    state = tmp_path / "state"
    state.mkdir()
    launcher = RuncLauncher(tmp_path / "data", peer="p1", layout="hybrid")
    ctx = LaunchContext(iid="web/0", env=ENV, workdir=tmp_path / "bundle", state_dir=state,
                        host_ip="127.0.53.9")
    launch = await launcher.prepare(spec(limits={"memory_mb": 32}), ctx)
    root = str(tmp_path / "data" / "runc")
    assert launch.argv == ("runc", "--root", root, "run", "--bundle", str(state / "bundle"),
                           "nm-web-0-p1")
    assert launch.cleanup == ("runc", "--root", root, "delete", "--force", "nm-web-0-p1")
    assert launch.enforces_limits and "nm-web-0-p1" in launch.description
    config = (state / "bundle" / "config.json")
    assert config.stat().st_mode & 0o077 == 0  # it holds the instance token
    assert '"limit": 33554432' in config.read_text()


@pytest.mark.parametrize(("doc", "workdir", "message"), [
    ({"run": {}}, True, r"runc needs run\.command"),
    ({"container": {"rootfs": "missing"}}, True, "no such folder or file"),
    ({"container": {"rootfs": "notes.txt"}}, True, "must be a folder or a .tar"),
    ({}, False, "deployed without one"),
    ({"container": {"image": "busybox"}}, True, r"needs \[container\] rootfs"),
])
async def test_runc_prepare_errors(tmp_path: Path, doc: dict[str, Any], workdir: bool,
                                   message: str) -> None:
    (tmp_path / "notes.txt").write_text("")
    ctx = LaunchContext(iid="web/0", env={}, workdir=tmp_path if workdir else None,
                        state_dir=tmp_path, host_ip="127.0.53.9")
    with pytest.raises(LaunchError, match=message):
        await RuncLauncher(tmp_path, layout="hybrid").prepare(spec(**doc), ctx)


# -- peer config ------------------------------------------------------------------------------


def test_peer_config_container_engine(tmp_path: Path) -> None:
    assert build_config(name="p", bind="127.0.53.9").container_engine == "auto"
    path = tmp_path / "peer.toml"
    path.write_text('[peer]\ncontainer_engine = "runc"\n')
    assert build_config(config_file=path, name="p", bind="127.0.53.9").container_engine == "runc"
    path.write_text('[peer]\ncontainer_engine = "lxc"\n')
    with pytest.raises(ConfigError, match=r"peer\.container_engine must be one of auto, runc"):
        build_config(config_file=path, name="p", bind="127.0.53.9")
