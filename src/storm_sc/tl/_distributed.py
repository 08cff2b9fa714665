"""Run the tools' per-slide work on the workers of a Dask ``distributed`` cluster, with the same code as in-process.

Each worker rebuilds the model from its checkpoint bytes (the same verified ``.safetensors`` format as
``StormModel.save``; loaded once per worker and model), runs the per-slide function the tool runs in-process, and
sends the arrays back. The caller writes results into the user's objects only after every slide has succeeded,
so a failure on any worker leaves every input as it was.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from storm_sc._settings import logger, settings

if TYPE_CHECKING:
    from distributed import Client
    from torch import nn

    from storm_sc.io import SpatialInput
    from storm_sc.models import StormModel

T = TypeVar("T")

# The model last loaded on this worker, by checkpoint digest: many slides, one load. One entry bounds the memory.
_WORKER_MODELS: dict[str, StormModel] = {}
_WORKER_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class ModelPayload:
    """A model as sent to the workers: its checkpoint bytes and, for ``morphology="module"``, its backbone module.

    Attributes
    ----------
    checkpoint
        The ``.safetensors`` file written by :meth:`StormModel.save` (float32: bit-exact weights).
    digest
        sha256 of ``checkpoint``; workers keep the loaded model under it.
    backbone
        The custom morphology module (its weights are in ``checkpoint``), or ``None``.
    """

    checkpoint: bytes
    digest: str
    backbone: nn.Module | None = None

    @classmethod
    def from_model(cls, model: StormModel) -> ModelPayload:
        """Serialise a model through its checkpoint format.

        Parameters
        ----------
        model
            The model to send.

        Returns
        -------
        The payload.

        Examples
        --------
        >>> import storm_sc as st
        >>> from storm_sc.tl._distributed import ModelPayload
        >>> model = st.models.StormModel("storm-tiny", ["A", "B"], seed=0)
        >>> ModelPayload.from_model(model).to_model().weights_digest() == model.weights_digest()
        True
        """
        with tempfile.TemporaryDirectory(prefix="storm_sc_payload_") as tmp:
            data = model.save(Path(tmp) / "model.safetensors").read_bytes()
        backbone = model.network.morphology.backbone if model.config.morphology == "module" else None
        return cls(checkpoint=data, digest=hashlib.sha256(data).hexdigest(), backbone=backbone)

    def to_model(self) -> StormModel:
        """Rebuild the model (verified like any checkpoint: a corrupted transfer is refused).

        Returns
        -------
        The model, on the CPU in evaluation mode.

        Examples
        --------
        >>> payload.to_model()  # doctest: +SKIP
        StormModel(storm-tiny, ...)
        """
        from storm_sc.models import StormModel

        with tempfile.TemporaryDirectory(prefix="storm_sc_payload_") as tmp:
            path = Path(tmp) / "model.safetensors"
            path.write_bytes(self.checkpoint)
            return StormModel.load(path, backbone=self.backbone)


def check_client(client: Any) -> None:
    """Refuse anything but a running ``distributed.Client`` (or ``None``), before any work.

    Parameters
    ----------
    client
        The ``client=`` argument of a tool.

    Examples
    --------
    >>> check_client(None)
    """
    if client is None:
        return
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - a Client cannot exist without distributed
        raise TypeError(f"`client` must be a dask `distributed.Client` or None; got {type(client).__name__}.") from err
    if not isinstance(client, Client):
        raise TypeError(
            f"`client` must be a dask `distributed.Client` (e.g. `distributed.Client(n_workers=4)` or "
            f"`distributed.get_client()`) or None; got {type(client).__name__}."
        )
    if client.status != "running":
        raise ValueError(f"The dask client is not running (status {client.status!r}); start or reconnect it first.")


def _worker_model(payload: ModelPayload) -> StormModel:
    with _WORKER_LOCK:
        model = _WORKER_MODELS.get(payload.digest)
        if model is None:
            _WORKER_MODELS.clear()
            model = _WORKER_MODELS[payload.digest] = payload.to_model()
        return model


def _run_on_worker(payload: ModelPayload, func: Callable[..., T], slide: SpatialInput, kwargs: dict[str, Any]) -> T:
    return func(_worker_model(payload), slide, **kwargs)


def map_slides(
    func: Callable[..., T],
    model: StormModel,
    slides: Sequence[SpatialInput],
    *,
    client: Client | None = None,
    verbose: bool | None = None,
    **kwargs: Any,
) -> list[T]:
    """``func(model, slide, verbose=..., **kwargs)`` for every slide: in this process, or on the workers of ``client``.

    The same ``func`` runs in both cases, so results agree up to floating-point summation order. With a client,
    slides are scattered over the workers, the model travels once per worker as checkpoint bytes, progress is
    shown per finished slide, and the first failure cancels the remaining slides and is raised here with its
    original type. Nothing is written anywhere: the caller writes the returned results.

    Parameters
    ----------
    func
        A module-level function ``func(model, slide, *, verbose, **kwargs)`` (workers import it by name).
    model
        The model every slide is processed with.
    slides
        Resolved slides (:func:`storm_sc.io.resolve`).
    client
        A ``distributed.Client``; ``None`` runs here, one slide after the other.
    verbose
        Progress bars (default: ``st.settings``); on workers, per-slide progress bars are always off.
    **kwargs
        Passed to ``func``.

    Returns
    -------
    The results of ``func``, in the order of ``slides``.

    Examples
    --------
    >>> import storm_sc as st
    >>> from storm_sc.models import StormModel
    >>> from storm_sc.tl._distributed import map_slides
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)
    >>> model = StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> [e.shape for e in map_slides(StormModel.embed, model, [st.io.resolve(sdata)], verbose=False)]
    [(60, 16)]
    """
    check_client(client)
    if client is None:
        return [func(model, slide, verbose=verbose, **kwargs) for slide in slides]
    return _map_on_client(client, func, model, list(slides), verbose=verbose, kwargs={**kwargs, "verbose": False})


def _map_on_client(
    client: Client,
    func: Callable[..., T],
    model: StormModel,
    slides: list[SpatialInput],
    *,
    verbose: bool | None,
    kwargs: dict[str, Any],
) -> list[T]:
    from distributed import as_completed
    from tqdm.auto import tqdm

    if not slides:
        return []
    n_workers = len(client.nthreads())
    if n_workers == 0:
        raise ValueError("The dask client has no workers; start some (e.g. `cluster.scale(2)`) or pass client=None.")
    logger.info("Running %s on %d slide(s) over %d dask worker(s).", getattr(func, "__name__", func), len(slides),
                n_workers)  # fmt: skip
    payload = client.scatter(ModelPayload.from_model(model), broadcast=True, hash=False)
    # Scattering a list spreads the slides over the workers; each task then runs where its slide already is.
    placed = client.scatter(slides, hash=False)
    run = uuid.uuid4().hex[:8]
    futures = [
        client.submit(_run_on_worker, payload, func, slide, kwargs, key=f"storm_sc-{run}-{i}", pure=False)
        for i, slide in enumerate(placed)
    ]
    finished = False
    try:
        with tqdm(total=len(futures), unit="slide", desc="slides (dask)",
                  disable=not settings.show_progress(verbose)) as bar:  # fmt: skip
            for future in as_completed(futures):
                if future.status == "error":
                    index = futures.index(future)
                    logger.error("Slide %r failed on a dask worker; cancelling the others.", slides[index].library_id)
                    future.result()  # raises the worker's exception, with its traceback
                bar.update(1)
        results = client.gather(futures)
        finished = True
        return results
    finally:
        if not finished:
            client.cancel(futures)
        client.cancel([payload, *placed])
