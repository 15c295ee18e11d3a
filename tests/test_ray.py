"""``--engine ray`` on a real two-node Ray cluster started on 127.0.0.1 (a head and a worker node, one CPU each):
the same tags and scores as the local engine, a run that survives losing the worker node, Parquet parts that a
rerun resumes, and ``phototag features`` filling the store that ``train`` then reads without running a backbone."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("ray.data", reason='the ray engine needs pip install "phototag[ray]"')
if not Path("/proc/self/cmdline").is_file():
    pytest.skip("the cluster fixture finds its Ray processes in /proc (Linux)", allow_module_level=True)

SRC = Path(__file__).resolve().parents[1] / "src"
N_PHOTOS = 20
#: CPUs each task and actor reserves: the 2 backbone actors, the scoring actor, a decode task and the column task (the
#: default model's shared feature sets) fit on one one-CPU node, so the run goes on when the worker node is lost.
RAY_CPUS = "0.2"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


#: The cluster's token (Ray's token authentication): the nodes and the driver share it, as on a real cluster.
TOKEN = secrets.token_hex(32)


def _env() -> dict[str, str]:
    """This checkout's phototag first on the path of the driver and of every Ray worker; the cluster's token."""
    path = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {
        **env,
        "PYTHONPATH": path,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
    }


class LocalCluster:
    """A Ray head and one worker node on 127.0.0.1, each with one CPU, their files in a private temp folder.

    Stopped by killing exactly the processes of this cluster (those naming its temp folder, and their descendants),
    by id, never other Ray clusters on the machine.
    """

    def __init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="ptray-", dir="/tmp"))  # short: Ray's socket paths are limited
        ray = str(Path(sys.executable).parent / "ray")
        self.port, self.worker_manager_port, *others = _free_ports(8)
        common = ["--num-cpus=1", "--num-gpus=0", f"--temp-dir={self.temp}", "--node-ip-address=127.0.0.1"]
        common += ["--disable-usage-stats"]
        head = [ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false", *common]
        head += [f"--dashboard-agent-listen-port={others[0]}", f"--metrics-export-port={others[1]}"]
        head += [f"--runtime-env-agent-port={others[2]}"]
        worker = [ray, "start", f"--address=127.0.0.1:{self.port}", *common]
        worker += [f"--node-manager-port={self.worker_manager_port}", f"--dashboard-agent-listen-port={others[3]}"]
        worker += [f"--metrics-export-port={others[4]}", f"--runtime-env-agent-port={others[5]}"]
        try:
            for command in (head, worker):
                done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=180)
                assert done.returncode == 0, done.stderr[-3000:]
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def processes(self) -> list[int]:
        """Ids of this cluster's processes: those naming its temp folder, and all their descendants."""
        table = {pid: (_parent(pid), _cmdline(pid)) for pid in map(int, filter(str.isdigit, os.listdir("/proc")))}
        mine = {os.getpid(), os.getppid()}
        found = {pid for pid, (_, cmd) in table.items() if str(self.temp) in cmd and pid not in mine}
        grown = True
        while grown:
            more = {pid for pid, (parent, _) in table.items() if parent in found} - found
            found |= more
            grown = bool(more)
        return sorted(found)

    def _worker_raylet(self) -> int | None:
        flag = f"--node_manager_port={self.worker_manager_port}"
        raylets = [pid for pid in self.processes() if flag in _cmdline(pid) and "raylet" in _cmdline(pid).split()[0]]
        return raylets[0] if raylets else None

    def worker_node_busy(self) -> bool:
        """Whether a Ray worker process of the worker node runs a task or an actor of a job."""
        raylet = self._worker_raylet()
        return raylet is not None and any(
            _parent(pid) == raylet and _cmdline(pid).startswith("ray::") and "IDLE" not in _cmdline(pid)
            for pid in self.processes()
        )

    def kill_worker_node(self) -> int:
        """Kill the worker node's raylet and every process it started (its Ray workers and actors)."""
        raylet = self._worker_raylet()
        assert raylet is not None, "the worker node's raylet is not running"
        victims = [raylet, *[pid for pid in self.processes() if _descends(pid, raylet)]]
        for pid in victims:
            _kill(pid)
        return len(victims)

    def stop(self) -> None:
        for pid in self.processes():
            _kill(pid)
        shutil.rmtree(self.temp, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = _parent(pid)
        if pid == ancestor:
            return True
    return False


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster():
    started = LocalCluster()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def photos(corel5k_dir: Path, tmp_path_factory) -> list[str]:
    """20 real Corel5k photos and one broken file (in the middle, so the engine must carry it through)."""
    found = sorted((corel5k_dir / "1000").glob("*.jpeg"))[: N_PHOTOS // 2]
    found += sorted((corel5k_dir / "113000").glob("*.jpeg"))[: N_PHOTOS - len(found)]
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    paths = [str(p) for p in found]
    return paths[:5] + [str(broken)] + paths[5:]


@pytest.fixture(scope="module")
def local_run(photos, tmp_path_factory):
    """The local engine's output (a fresh feature cache: computed, as the cluster does)."""
    cache = tmp_path_factory.mktemp("local-cache")
    return _cli(["tag", *photos, "--top-k", "5", "--format", "jsonl", "--cache-dir", str(cache)])


def _cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "phototag.cli", "-q", *args]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)


def _ray_args(cluster: LocalCluster) -> list[str]:
    return ["--engine", "ray", "--ray-address", cluster.address, "--ray-cpus", RAY_CPUS, "--ray-actors", "1"]


def _assert_same(ray_out: str, local_out: str, n: int = N_PHOTOS) -> None:
    ray_rows = [json.loads(line) for line in ray_out.splitlines()]
    local_rows = [json.loads(line) for line in local_out.splitlines()]
    assert [r["image"] for r in ray_rows] == [r["image"] for r in local_rows]
    assert len(ray_rows) == n
    for ours, theirs in zip(ray_rows, local_rows, strict=True):
        assert [t["tag"] for t in ours["tags"]] == [t["tag"] for t in theirs["tags"]], ours["image"]
        for a, b in zip(ours["tags"], theirs["tags"], strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-3


def _failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "image(s) could not be read" in line or "broken.jpg" in line]


def test_tag_on_a_two_node_cluster_matches_the_local_engine(cluster, photos, local_run):
    assert local_run.returncode == 1, local_run.stderr
    run = _cli(["tag", *photos, "--top-k", "5", "--format", "jsonl", *_ray_args(cluster)])
    assert run.returncode == 1, run.stderr[-3000:]
    _assert_same(run.stdout, local_run.stdout)
    assert _failure_lines(run.stderr) == _failure_lines(local_run.stderr)
    assert _failure_lines(run.stderr)[0].startswith("1 image(s) could not be read")


def _assert_parts_match(out: Path, photos: list[str], local_out: str) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pydict()
    assert table["image"] == photos
    local = {row["image"]: row for row in map(json.loads, local_out.splitlines())}
    assert len(set(table["model"])) == 1 and table["model"][0].startswith("merged-")
    for image, tags, scores, error in zip(table["image"], table["tags"], table["scores"], table["error"], strict=True):
        if image not in local:
            assert error and tags == [] and image.endswith("broken.jpg")
            continue
        assert error is None
        assert tags == [t["tag"] for t in local[image]["tags"]]
        assert max(abs(a - t["score"]) for a, t in zip(scores, local[image]["tags"], strict=True)) <= 1e-3


def test_features_on_the_cluster_feed_train_and_predict_runs_on_the_cluster(
    cluster, synthetic_photos, synthetic_dataset, tmp_path, monkeypatch
):
    from phototag.features import FeatureStore
    from phototag.pipeline import train

    cache = tmp_path / "cache"
    run = _cli(["features", str(synthetic_dataset), "--cache-dir", str(cache), *_ray_args(cluster)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Features of 72 of 72 photos (efficientnet_lite0)" in run.stdout
    store = FeatureStore("efficientnet_lite0", cache)
    assert len(store.cache) == 72

    def no_backbone(self, batch):
        raise AssertionError("training ran the backbone although the feature store holds every photo")

    monkeypatch.setattr(FeatureStore, "_embed", no_backbone)
    model = train(synthetic_dataset, method="knn", cache_dir=cache, progress=False, out=tmp_path / "knn")
    assert model.info["n_train"] == 48
    assert model.info["validation"]["map"] > 0.9  # real features of the photos, not zeros
    monkeypatch.undo()

    # predict MODEL --engine ray with a one-backbone model: the same tags as the local engine.
    test_photos = sorted(str(p) for p in (synthetic_photos / "img" / "test").iterdir())
    assert len(test_photos) == 12
    args = ["predict", str(tmp_path / "knn"), *test_photos, "--top-k", "2", "--format", "jsonl"]
    local = _cli([*args, "--cache-dir", str(tmp_path / "fresh")])
    on_ray = _cli([*args, *_ray_args(cluster)])
    assert local.returncode == on_ray.returncode == 0, on_ray.stderr[-3000:]
    _assert_same(on_ray.stdout, local.stdout, n=12)


def test_actor_pools_that_leave_no_cpu_for_decoding_are_refused(cluster, photos):
    run = _cli(["tag", *photos[:2], "--engine", "ray", "--ray-address", cluster.address, "--ray-actors", "2"])
    assert run.returncode == 2
    # The default model runs 2 networks (its 2 other feature sets are their columns): 2 actors each, 1 scoring actor,
    # 1 decode task and 1 column task = 7 CPUs.
    assert "2 actor(s) for each of 2 backbone(s)" in run.stderr
    assert "need 7 CPUs; the cluster has 2. Lower --ray-actors or --ray-cpus, or add nodes." in run.stderr


def test_parquet_run_survives_losing_the_worker_node_and_resumes(cluster, photos, local_run, tmp_path):
    """Runs last: it leaves the cluster without its worker node."""
    out = tmp_path / "tags"
    command = [sys.executable, "-m", "phototag.cli", "-q", "tag", *photos, "--top-k", "5", "--out", str(out)]
    command += ["--part-size", "8", *_ray_args(cluster)]
    run = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Kill the worker node once it runs part of the job (a decode task or an actor has started on it).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None and not cluster.worker_node_busy():
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before the worker node took part"
        assert cluster.kill_worker_node() >= 1
        _, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, stderr[-3000:]
    assert _failure_lines(stderr) == _failure_lines(local_run.stderr)
    _assert_parts_match(out, photos, local_run.stdout)  # nothing lost, nothing changed

    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    kept = parts[0].stat().st_mtime_ns
    parts[1].unlink()  # as if the run had stopped before writing its second part
    rerun = _cli(command[4:])
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    assert parts[0].stat().st_mtime_ns == kept  # finished parts are not redone
    assert _failure_lines(rerun.stderr) == _failure_lines(local_run.stderr)
    _assert_parts_match(out, photos, local_run.stdout)
