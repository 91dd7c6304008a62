"""Where batch tasks run: in this process, a local Dask cluster, or an existing Dask scheduler.

``--scheduler`` takes:

* ``in-process`` (the default): tasks run one after another in this process; no extra
  processes, no Dask machinery at all;
* ``local:N``: a :class:`distributed.LocalCluster` of ``N`` worker processes (one task thread
  each, the CPU cores shared between them), listening on loopback only, closed with the job;
* ``tcp://host:port`` (or ``tls://``): an existing ``dask.distributed`` scheduler, e.g. with
  ``dask-cuda`` workers on GPU hosts. Inputs and outputs must be on a file system every worker
  sees (outputs are written by the workers, chunk by chunk, not shipped back).

The model is loaded once per worker process, not per task: a :class:`PredictorPlugin`
(a ``distributed`` WorkerPlugin) builds the :class:`~training.inference.predictor.Predictor` in
``setup``; a worker that dies and is restarted by its nanny runs ``setup`` again. Tasks find
it with :func:`predictor_for`, which is also what the in-process runner uses, so every mode runs
the same task functions with the same model and settings (outputs are byte-identical).

Runners run work two ways: :meth:`~InProcessRunner.map` (one task per item: folder jobs) and
:meth:`~InProcessRunner.compute` (keys of dask task graphs, e.g. a gigapixel job's
``map_overlap`` windows; dask's synchronous scheduler in this process). Task functions return
small records; an unexpected exception inside a task (not a per-input error, which tasks record
themselves) propagates and ends the job.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dask.callbacks import Callback
from dask.local import get_sync
from distributed import Client, LocalCluster, as_completed
from distributed.diagnostics.plugin import WorkerPlugin

from training.bundle import BundleError, file_sha256
from training.device import set_cpu_threads
from training.errors import OptionError
from training.inference.options import InferenceOptions
from training.inference.predictor import Predictor

#: The default scheduler: tasks run in the calling process.
IN_PROCESS = "in-process"
#: Prefix of a local cluster request (``local:N``).
LOCAL_PREFIX = "local:"
#: Address schemes of an existing dask.distributed scheduler.
REMOTE_SCHEMES = ("tcp://", "tls://")

#: Predictors loaded in this process, by :meth:`PredictorSpec.key` (one per worker process).
_PREDICTORS: dict[str, Predictor] = {}
#: How many times this process built a predictor, by spec key (diagnostics: once per worker).
LOADS: Counter[str] = Counter()


@dataclass(frozen=True)
class PredictorSpec:
    """Everything a worker needs to build the job's predictor, and nothing else (picklable).

    ``options`` are the predictor's resolved :class:`~training.inference.options.InferenceOptions`
    (``tile="auto"`` is measured once, by the client, so every worker uses the same tiles);
    ``sha256`` is the bundle file's hash, checked by each worker so a bundle replaced mid-job
    cannot mix models into one output.
    """

    bundle: str
    sha256: str
    options: InferenceOptions

    def key(self) -> str:
        """A short hash naming this predictor (one per worker process)."""
        return hashlib.sha256(f"{self.bundle}\0{self.sha256}\0{self.options.key()}".encode()).hexdigest()[:16]


def load_predictor(spec: PredictorSpec) -> Predictor:
    """Build the predictor of ``spec`` after checking the bundle file is the one planned."""
    LOADS[spec.key()] += 1
    found = file_sha256(spec.bundle)
    if found != spec.sha256:
        raise BundleError(f"{spec.bundle}: bundle changed during the job (sha256 {found[:12]}, expected {spec.sha256[:12]})")
    return Predictor(spec.bundle, spec.options)


def predictor_for(spec: PredictorSpec) -> Predictor:
    """This process's predictor for ``spec``: the one the worker plugin (or the in-process
    runner) loaded, or loaded now if neither did (a worker that joined without the plugin)."""
    key = spec.key()
    if key not in _PREDICTORS:
        _PREDICTORS[key] = load_predictor(spec)
    return _PREDICTORS[key]


def adopt_predictor(spec: PredictorSpec, predictor: Predictor) -> None:
    """Let tasks in this process reuse an already built predictor for ``spec``."""
    _PREDICTORS[spec.key()] = predictor


def release_predictor(spec: PredictorSpec) -> None:
    _PREDICTORS.pop(spec.key(), None)


class PredictorPlugin(WorkerPlugin):
    """Loads the job's predictor once when a worker starts (or joins, or is restarted).

    ``threads``: PyTorch threads per worker (``local:N`` shares the cores between its N
    workers); ``None`` gives each worker of an existing cluster as many as its task threads.
    """

    def __init__(self, spec: PredictorSpec, threads: int | None) -> None:
        self.spec = spec
        self.threads = threads
        self.name = f"tessera-predictor-{spec.key()}"

    def setup(self, worker) -> None:
        set_cpu_threads(self.threads or getattr(worker.state, "nthreads", None))
        predictor_for(self.spec)

    def teardown(self, worker) -> None:
        release_predictor(self.spec)


def parse_scheduler(text: str) -> tuple[str, int | str | None]:
    """``("in-process", None)``, ``("local", N)`` or ``("remote", address)``; ValueError otherwise."""
    text = (text or IN_PROCESS).strip()
    if text == IN_PROCESS:
        return "in-process", None
    if text.startswith(LOCAL_PREFIX):
        count = text[len(LOCAL_PREFIX) :]
        if not count.isdigit() or int(count) < 1:
            raise OptionError(f"--scheduler {text!r}: local:N needs a worker count N >= 1")
        return "local", int(count)
    if text.startswith(REMOTE_SCHEMES) and len(text) > len("tcp://"):
        return "remote", text
    raise OptionError(f"--scheduler must be 'in-process', 'local:N' or 'tcp://host:port', not {text!r}")


class InProcessRunner:
    """Runs tasks one after another in this process (the default scheduler)."""

    description = IN_PROCESS
    client = None

    def __init__(self, spec: PredictorSpec, predictor: Predictor | None = None) -> None:
        self.spec = spec
        if predictor is not None:
            adopt_predictor(spec, predictor)

    def map(self, function: Callable[..., Any], items: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
        """Results of ``function(item, **kwargs)``, in order."""
        for item in items:
            yield function(item, **kwargs)

    def compute(self, work: Iterable[tuple[Mapping, list]], done: Callable[[Any], None]) -> None:
        """Compute the ``keys`` of each ``(graph, keys)`` with dask's synchronous scheduler, one
        graph after another, calling ``done(result)`` as each key finishes (an exception raised by
        ``done`` stops the computation there)."""
        for graph, keys in work:
            wanted = set(keys)

            def finished(key, result, _dsk, _state, _worker, wanted: set = wanted) -> None:
                if key in wanted:
                    done(result)

            with Callback(posttask=finished):
                get_sync(graph, keys)

    def close(self) -> None:
        release_predictor(self.spec)


class DaskRunner:
    """Runs tasks on a dask.distributed cluster (one we start, or an existing one)."""

    def __init__(self, spec: PredictorSpec, kind: str, target: int | str) -> None:
        self.spec = spec
        self.cluster = None
        if kind == "local":
            cores = len(os.sched_getaffinity(0))
            self.cluster = LocalCluster(
                n_workers=int(target),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            threads = max(1, cores // int(target))
            self.description = f"local:{target}"
            self.client = Client(self.cluster)
        else:
            threads = None
            self.description = str(target)
            self.client = Client(str(target))
        self.plugin = PredictorPlugin(spec, threads)
        self.client.register_plugin(self.plugin)

    def map(self, function: Callable[..., Any], items: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
        """Results of ``function(item, **kwargs)`` as they complete (any order). A task on a
        worker that dies is rescheduled by Dask on another worker."""
        items = list(items)
        if not items:
            return
        futures = self.client.map(function, items, pure=False, **kwargs)
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            self.client.cancel(futures)

    def compute(self, work: Iterable[tuple[Mapping, list]], done: Callable[[Any], None]) -> None:
        """Compute the ``keys`` of each ``(graph, keys)`` on the cluster, calling ``done(result)``
        as each finishes (any order). The next graph is submitted once fewer than two keys per
        worker thread are in flight, so a long job never submits its whole graph at once; Dask
        recomputes the keys of a worker that dies."""
        limit = max(2, 2 * sum(self.client.nthreads().values()))
        running = as_completed()
        in_flight: set = set()

        def collect() -> None:
            future = next(running)
            in_flight.discard(future)
            done(future.result())

        try:
            for graph, keys in work:
                futures = self.client.get(graph, keys, sync=False)
                in_flight.update(futures)
                running.update(futures)
                while running.count() >= limit:
                    collect()
            while running.count():
                collect()
        finally:
            self.client.cancel(list(in_flight))

    def close(self) -> None:
        try:
            self.client.unregister_worker_plugin(self.plugin.name)
        except Exception:  # the cluster may already be gone; closing must not mask the job's result
            pass
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


Runner = InProcessRunner | DaskRunner


def open_runner(scheduler: str, spec: PredictorSpec, predictor: Predictor | None = None) -> Runner:
    """The runner for a ``--scheduler`` value (see the module docstring). Close it when done."""
    kind, target = parse_scheduler(scheduler)
    if kind == "in-process":
        return InProcessRunner(spec, predictor)
    return DaskRunner(spec, kind, target)
