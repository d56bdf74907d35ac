"""A sweep's trials across processes and machines, on Ray: ``vqnet run --cluster SPEC``.

``SPEC`` is ``local`` or ``local:N`` (start a Ray instance on this machine with N workers; N
defaults to the core count), ``ray://HOST:PORT`` (join a running cluster through Ray Client) or
``auto`` (join the cluster this machine belongs to, as ``ray start`` left it).

Each worker is a Ray actor holding one :class:`vqnet.sweep.TrialWorker`: it loads the codec and
the concealment transformers once, runs with the driver's device, precision and torch thread
count (the thread count moves a decode's last bits), and runs the trials it is sent. The driver
remains the sweep: it decides which trials run (adaptive trials included), appends each result to
the journal the moment it arrives, and writes the tables, so results.csv is the serial run's,
byte for byte, on the same kind of machine. GPU workers ask Ray for a GPU each (a share of one
with ``local:N`` on a machine with fewer GPUs).

A worker process that dies (killed, out of memory, its node gone) is restarted by Ray, which runs
its unfinished trials again (``max_restarts`` / ``max_task_retries``); a trial's seed depends only
on its key, so the rerun gives the same rows.

Ray is an optional extra: ``pip install 'vqnet[ray]'``. Why Ray rather than Dask: actors, a
process that keeps a loaded model between tasks and is restarted when it dies, are Ray's own
primitive, as is asking for GPUs per worker.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import vqnet
from vqnet.codec.bundle import load_codec
from vqnet.errors import VqnetError
from vqnet.runtime import prepare
from vqnet.sweep import TrialResult, TrialTask, TrialWorker

if TYPE_CHECKING:
    from vqnet.images import NamedImage
    from vqnet.scenario import Scenario

INSTALL_HINT = "pip install 'vqnet[ray]'"
#: Trials sent to one worker at a time: one running, one waiting, so it never idles on the driver.
PER_WORKER = 2


class ClusterError(VqnetError, ValueError):
    """A --cluster request that cannot be honoured; the message is one line for the user."""


def parse_cluster(spec: str) -> tuple[str | None, int | None]:
    """(address to join or None for a local instance, local worker count or None)."""
    if spec == "auto" or spec.startswith("ray://"):
        return spec, None
    name, _, count = spec.partition(":")
    if name == "local":
        if not count:
            return None, os.cpu_count() or 1
        if count.isdigit() and int(count) >= 1:
            return None, int(count)
    raise ClusterError(f"--cluster must be local, local:N (N >= 1), ray://HOST:PORT or auto, got {spec!r}")


def _ray():  # noqa: ANN202 - the ray module, imported only when a cluster is asked for
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--cluster needs Ray, an optional extra: {INSTALL_HINT}") from None
    return ray


class _Worker:
    """The actor: a TrialWorker in its own process, set up as the driver is."""

    def __init__(
        self, sc: Scenario, model: str | None, images: list[NamedImage], device: str, precision: str, threads: int
    ):
        torch.set_num_threads(threads)
        codec = load_codec(model).to(*prepare(device, precision))
        self.worker = TrialWorker(sc, codec, images)

    def run(self, task: TrialTask) -> TrialResult:
        return self.worker.run(task)


class RayPool:
    """Trials on Ray actors (:class:`vqnet.sweep.TrialPool`); use it as a context manager, which
    leaves (and, for ``local``, stops) the Ray instance at the end."""

    def __init__(
        self,
        spec: str,
        sc: Scenario,
        model: Path | None,
        images: list[NamedImage],
        device: torch.device,
        precision: str,
    ):
        address, n_local = parse_cluster(spec)
        ray = self.ray = _ray()
        threads = torch.get_num_threads()
        gpu = device.type == "cuda"
        if address is None:
            # The workers import this checkout's vqnet, whatever else the environment has installed.
            path = os.pathsep.join(
                filter(None, [str(Path(vqnet.__file__).parent.parent), os.environ.get("PYTHONPATH")])
            )
            gpus = torch.cuda.device_count() if gpu else 0
            ray.init(
                num_cpus=n_local * (1 if gpu else threads),
                num_gpus=gpus,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
            )
            n = n_local
            share = {"num_cpus": 1, "num_gpus": min(1.0, gpus / n)} if gpu else {"num_cpus": threads}
        else:
            try:
                ray.init(
                    address=address,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    # The package's folder, not the module: Ray Client pickles the runtime env.
                    runtime_env={"py_modules": [str(Path(vqnet.__file__).parent)]},
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(f"--cluster {spec}: cannot join the Ray cluster ({exc})") from None
            resources = ray.cluster_resources()
            n = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 0) // threads)
            share = {"num_cpus": 1, "num_gpus": 1} if gpu else {"num_cpus": threads}
            if n < 1:
                ray.shutdown()
                raise ClusterError(
                    f"--cluster {spec}: the cluster has no {'GPU' if gpu else f'{threads} free CPUs'} for a worker"
                )
        actor = ray.remote(max_restarts=-1, max_task_retries=-1)(_Worker).options(**share)
        shared = ray.put(images)
        model_arg = None if model is None else str(model)
        self.actors = [actor.remote(sc, model_arg, shared, str(device), precision, threads) for _ in range(n)]
        self.capacity = PER_WORKER * n
        self.load = [0] * n
        self.encoded: list[set[tuple[int, int]]] = [set() for _ in range(n)]  # (image, K) each actor has
        self.running: dict = {}  # ObjectRef -> actor index
        self.queue: deque[TrialTask] = deque()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ray.shutdown()

    @property
    def in_flight(self) -> int:
        return len(self.running) + len(self.queue)

    def submit(self, task: TrialTask) -> None:
        self.queue.append(task)
        self._dispatch()

    def _dispatch(self) -> None:
        """Send waiting trials to the least loaded workers, preferring one that has the trial's
        image encoded at its K already."""
        while self.queue and min(self.load) < PER_WORKER:
            task = self.queue.popleft()
            place = (task.image_id, task.k_i)
            i = min(range(len(self.actors)), key=lambda a: (self.load[a], place not in self.encoded[a], a))
            self.running[self.actors[i].run.remote(task)] = i
            self.load[i] += 1
            self.encoded[i].add(place)

    def next_done(self) -> TrialResult:
        """The next trial to finish, in whatever order they do."""
        [ref], _ = self.ray.wait(list(self.running), num_returns=1)
        self.load[self.running.pop(ref)] -= 1
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the trial's own error, not Ray's wrapper
            raise exc.cause from None
        self._dispatch()
        return result
