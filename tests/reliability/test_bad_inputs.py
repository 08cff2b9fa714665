"""One corpus of bad inputs run through the public calls: a clear error (or a documented warning), never a mutation.

Each case names the call, builds the user's object, and states the outcome: an exception type with a regex of its
actionable message, a warning, or acceptance with exactly the expected additions. Whatever the outcome, the user's
objects (every table's obs/var/X/layers/obsm/obsp/uns, element names, transformations, attrs) and the model are
compared with a deep snapshot taken before the call.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
from _pytest.mark.structures import ParameterSet
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity, Scale, set_transformation

import storm_sc as st
from storm_sc.models import CheckpointError, StormModel
from tests.reliability._compare import differences, snapshot
from tests.reliability.conftest import N_GENES, N_OBS, toy_slide

BATCH = 32  # N_OBS = 80 observations -> 3 batches per slide
EMBEDDED = {"tables['table'].obsm['X_storm'] added", "tables['table'].uns['storm'] added"}
PREDICTED = {"tables['storm_predicted'] added"}


@dataclass
class Ctx:
    """What the builders may use: the session's model and a private folder."""

    model: StormModel
    tmp: Path

    @cached_property
    def checkpoint(self) -> Path:
        return self.model.save(self.tmp / "model.safetensors")

    @cached_property
    def truncated(self) -> Path:
        data = self.checkpoint.read_bytes()
        path = self.tmp / "truncated.safetensors"
        path.write_bytes(data[: len(data) // 2])
        return path

    @cached_property
    def tampered(self) -> Path:
        data = bytearray(self.checkpoint.read_bytes())
        data[-5] ^= 0x10  # the last bytes are weights: a one-bit change no parser notices, only the hash
        path = self.tmp / "tampered.safetensors"
        path.write_bytes(bytes(data))
        return path


@dataclass(frozen=True)
class Case:
    """One bad input and the outcome it must have.

    ``raises``/``match``: the exception and a regex of its message. ``warns``: a regex of a storm_sc warning.
    ``changes``: the differences an accepted input may make (the result itself); ``None`` when it must raise.
    ``interrupt``: a context manager factory run around the call (e.g. a forward hook that interrupts the model).
    """

    call: str
    build: Callable[[Ctx], Any]
    kwargs: dict[str, Any] | Callable[[Ctx], dict[str, Any]] = field(default_factory=dict)
    raises: type[BaseException] | None = None
    match: str | None = None
    warns: str | None = None
    changes: frozenset[str] = frozenset()
    interrupt: Callable[[StormModel], AbstractContextManager] | None = None


# --- the user's objects -----------------------------------------------------------------------------------------


def slide(ctx: Ctx | None = None, *, seed: int = 1):
    return toy_slide(seed)


def no_image(ctx: Ctx):
    return toy_slide(2, image=False)


def image_elsewhere(sdata):
    set_transformation(sdata.images["toy_image"], {"other_slide": Identity()}, set_all=True)
    return sdata


def image_in_other_cs(ctx: Ctx):
    return image_elsewhere(slide())


def image_not_covering(ctx: Ctx):
    sdata = slide()
    # a 50 x 50 px thumbnail put in place of the full image: almost every spot falls outside it
    sdata.images["toy_image"] = Image2DModel.parse(
        np.full((3, 50, 50), 200, np.uint8), dims=("c", "y", "x"), transformations={"global": Identity()}
    )
    return sdata


def image_scaled_10x(ctx: Ctx):
    sdata = slide()
    # the image still covers every spot, but was re-placed 10x too large: patches would show the wrong tissue area
    set_transformation(sdata.images["toy_image"], Scale([10.0, 10.0], axes=("x", "y")), "global")
    return sdata


def image_cropped(ctx: Ctx):
    sdata = slide()
    # the scan stops short of the last column of spots (x >= 400 px): their patches are padded with white
    pixels = sdata.images["toy_image"].data[:, :, :400]
    sdata.images["toy_image"] = Image2DModel.parse(pixels, dims=("c", "y", "x"), transformations={"global": Identity()})
    return sdata


def coarse_image(ctx: Ctx):
    # 8 um per pixel: coarser than the 3.5 um/px of storm-tiny's 112 um / 32 px patches
    return st.datasets.toy(n_obs=N_OBS, n_genes=N_GENES, n_domains=3, mpp=8.0, seed=1)


def zero_count_obs(ctx: Ctx):
    sdata = slide()
    x = sdata["table"].X.toarray()
    x[:10] = 0
    sdata["table"].X = x
    return sdata


def bad_value(value: float) -> Callable[[Ctx], Any]:
    def build(ctx: Ctx):
        sdata = slide()
        x = sdata["table"].X.toarray()
        x[3, 4] = value
        sdata["table"].X = x
        return sdata

    return build


def duplicated_obs(ctx: Ctx):
    sdata = slide()
    table = sdata["table"]
    table.obs_names = ["spot"] * 4 + list(table.obs_names[4:])
    return sdata


def duplicated_genes(ctx: Ctx):
    sdata = slide()
    table = sdata["table"]
    table.var_names = [table.var_names[1]] + list(table.var_names[1:])
    return sdata


def duplicated_genes_case(ctx: Ctx):
    sdata = slide()
    table = sdata["table"]
    table.var_names = [table.var_names[1].upper()] + list(table.var_names[1:])
    return sdata


def empty_table(ctx: Ctx):
    sdata = slide()
    # spatialdata refuses an empty table, but a filtered one can end up empty in place
    sdata["table"]._inplace_subset_obs(np.zeros(N_OBS, dtype=bool))
    return sdata


def foreign_genes(ctx: Ctx):
    sdata = slide()
    sdata["table"].var_names = [f"Olfr{i}" for i in range(N_GENES)]
    return sdata


def positions_only(ctx: Ctx):
    table = slide()["table"]
    return ad.AnnData(table.X.copy(), obs=table.obs[[]].copy(), var=table.var[[]].copy(),
                      obsm={"spatial": np.random.default_rng(0).uniform(0, 900, (N_OBS, 2))})  # fmt: skip


def embedded(rep: Callable[[int], np.ndarray]) -> Callable[[Ctx], Any]:
    def build(ctx: Ctx):
        sdata = slide()
        sdata["table"].obsm["X_storm"] = rep(N_OBS)
        return sdata

    return build


def _uns_storm(sdata, value):
    sdata["table"].uns["storm"] = value
    return sdata


def _with_embedding(data):
    table = data if isinstance(data, ad.AnnData) else data["table"]
    table.obsm["X_storm"] = np.random.default_rng(0).normal(size=(table.n_obs, 4))
    return data


def two_slides(second: Callable[[Ctx], Any]) -> Callable[[Ctx], list]:
    return lambda ctx: [slide(seed=3), second(ctx)]


def uns_storm_not_a_dict(ctx: Ctx):
    sdata = slide(seed=4)
    sdata["table"].uns["storm"] = "notes of the lab"  # a user's own use of the name
    return sdata


def checkpoint_file(kind: str) -> Callable[[Ctx], Path]:
    return lambda ctx: getattr(ctx, kind)


# --- interruptions from inside the model -----------------------------------------------------------------------


def interrupt_on_call(module: str, n: int, exc: type[BaseException] = KeyboardInterrupt):
    """A real interruption: a forward hook on ``model.network.<module>`` raises on its ``n``-th call."""

    @contextmanager
    def factory(model: StormModel) -> Iterator[None]:
        calls = 0

        def hook(mod, args, output):
            nonlocal calls
            calls += 1
            if calls == n:
                raise exc(f"interrupted in {module} on call {n}")

        handle = getattr(model.network, module).register_forward_hook(hook)
        sigint = signal.getsignal(signal.SIGINT)
        try:
            yield
        finally:
            handle.remove()
            # Lightning answers an interrupt by ignoring SIGINT for good; do not let that leak into other tests
            signal.signal(signal.SIGINT, sigint)

    return factory


CASES: dict[str, Any] = {
    # ---- st.tl.storm_embed
    "embed/missing_image_but_required": Case(
        "embed", no_image, {"modalities": "image"}, ValueError,
        r"no H&E image but modalities='image' asks for it; pass `image_key=` or use modalities='expression'",
    ),
    "embed/unknown_image_key": Case(
        "embed", slide, {"image_key": "he"}, ValueError, r"No image 'he'; images found: 'toy_image'"
    ),
    "embed/image_key_in_a_list": Case(
        "embed", slide, {"image_key": ["toy_image"]}, TypeError,
        r"`image_key` must be a name \(a string\) or None, got list \['toy_image'\]; pass image_key='toy_image'",
    ),
    "embed/image_key_per_slide": Case(
        "embed", slide, {"image_key": ["a", "b"]}, TypeError, r"`image_key` must be a name.*one name applies to every"
    ),
    "embed/table_key_not_a_name": Case("embed", slide, {"table_key": 0}, TypeError, r"`table_key` must be a name"),
    "embed/image_in_other_coordinate_system": Case(
        "embed", image_in_other_cs, {}, ValueError,
        r"No H&E image .* shares a coordinate system with the table's elements \['toy_spots'\]",
    ),
    "embed/image_not_covering_spots": Case(
        "embed", image_not_covering, {}, ValueError, r"79 of 80 observations .* lie outside image 'toy_image'"
    ),
    "embed/image_placed_10x_too_large": Case(
        "embed", image_scaled_10x, {}, ValueError,
        r"measure 5.5 um across, but the data record 55 um \(0.1x off\).*set_transformation",
    ),
    "embed/mpp_10x_too_large": Case(
        "embed", slide, {"mpp": 20.0}, ValueError, r"`mpp=20` is 10x larger than the scale of this generic slide"
    ),
    "embed/mpp_10x_too_small": Case(
        "embed", slide, {"mpp": 0.2}, ValueError, r"`mpp=0.2` is 10x smaller.*leave `mpp=None`"
    ),
    "embed/positions_only_without_mpp": Case(
        "embed", positions_only, {}, ValueError, r"unit of its positions is unknown; pass `mpp=`"
    ),
    "embed/image_cropped_at_the_edge": Case(
        "embed", image_cropped, warns=r"lie outside image 'toy_image' .*; their patches will be padded", changes=EMBEDDED
    ),
    "embed/image_coarser_than_the_patches": Case(
        "embed", coarse_image, warns=r"coarser than the 3.5 um/px of a 112 um / 32 px patch", changes=EMBEDDED
    ),
    "embed/zero_count_observations": Case("embed", zero_count_obs, changes=EMBEDDED),
    "embed/nan_in_X": Case("embed", bad_value(np.nan), {}, ValueError, r"1 NaN or infinite values.*`layer=`"),
    "embed/inf_in_X": Case("embed", bad_value(np.inf), {}, ValueError, r"1 NaN or infinite values"),
    "embed/negative_in_X": Case("embed", bad_value(-1.5), {}, ValueError, r"1 negative values.*sc.pp.scale"),
    "embed/nan_in_X_image_only": Case("embed", bad_value(np.nan), {"modalities": "image"}, changes=EMBEDDED),
    "embed/duplicated_obs_names": Case("embed", duplicated_obs, {}, ValueError, r"obs_names_make_unique"),
    "embed/duplicated_gene_names": Case("embed", duplicated_genes, {}, ValueError, r"var_names_make_unique"),
    "embed/genes_duplicated_by_case": Case(
        "embed", duplicated_genes_case, {}, ValueError, r"duplicate gene symbols after case-folding: 'gene_0001'"
    ),
    "embed/empty_table": Case("embed", empty_table, {}, ValueError, r"no observations \(0 rows\)"),
    "embed/no_gene_overlap": Case(
        "embed", foreign_genes, {}, ValueError, r"No gene in common.*'Olfr0'.*Check the species"
    ),
    "embed/no_gene_overlap_image_only": Case("embed", foreign_genes, {"modalities": "image"}, changes=EMBEDDED),
    "embed/truncated_checkpoint": Case(
        "embed", slide, lambda c: {"model": c.truncated}, CheckpointError, r"truncated.*Download or copy it again"
    ),
    "embed/hash_mismatched_checkpoint": Case(
        "embed", slide, lambda c: {"model": c.tampered}, CheckpointError, r"fails its integrity check"
    ),
    "embed/missing_checkpoint": Case(
        "embed", slide, lambda c: {"model": c.tmp / "absent.safetensors"}, FileNotFoundError, r"No checkpoint file"
    ),
    "embed/interrupted_on_2nd_batch": Case(
        "embed", slide, {"batch_size": BATCH}, KeyboardInterrupt, "call 2", interrupt=interrupt_on_call("fusion", 2)
    ),
    "embed/adaptation_interrupted": Case(
        "embed", slide, {"adapt_epochs": 1}, KeyboardInterrupt, "call 2",
        interrupt=interrupt_on_call("fusion", 2),
    ),
    "embed/error_on_2nd_batch": Case(
        "embed", slide, {"batch_size": BATCH}, RuntimeError, "call 2",
        interrupt=interrupt_on_call("fusion", 2, RuntimeError),
    ),
    "embed/two_slides_interrupted_in_the_second": Case(
        # 3 batches for the first slide, then the 2nd batch of the second
        "embed", two_slides(slide), {"batch_size": BATCH}, KeyboardInterrupt, "call 5",
        interrupt=interrupt_on_call("fusion", 5),
    ),
    "embed/two_slides_second_invalid": Case(
        "embed", two_slides(bad_value(np.nan)), {}, ValueError, r"NaN or infinite"
    ),
    "embed/two_slides_second_uns_storm_not_a_dict": Case(
        "embed", two_slides(uns_storm_not_a_dict), {}, TypeError, r"\.uns\['storm'\] is a str, not a dict"
    ),
    # ---- st.tl.predict_expression
    "predict/missing_image": Case("predict", no_image, {}, ValueError, r"no H&E image.*holds no image: add the slide's H&E"),
    "predict/image_key_in_a_list": Case(
        "predict", slide, {"image_key": ["toy_image"]}, TypeError, r"`image_key` must be a name.*image_key='toy_image'"
    ),
    "predict/image_in_other_coordinate_system": Case(
        "predict", image_in_other_cs, {}, ValueError, r"No H&E image .* shares a coordinate system"
    ),
    "predict/image_not_covering_spots": Case(
        "predict", image_not_covering, {}, ValueError, r"lie outside image 'toy_image'"
    ),
    "predict/image_placed_10x_too_large": Case(
        "predict", image_scaled_10x, {}, ValueError, r"the data record 55 um \(0.1x off\)"
    ),
    "predict/mpp_10x_too_large": Case("predict", slide, {"mpp": 20.0}, ValueError, r"`mpp=20` is 10x larger"),
    # measured expression is never read: bad values, duplicated or foreign genes in the table do not matter
    "predict/nan_in_X_is_not_read": Case("predict", bad_value(np.nan), changes=PREDICTED),
    "predict/duplicated_gene_names_not_read": Case("predict", duplicated_genes, changes=PREDICTED),
    "predict/no_gene_overlap_in_table": Case("predict", foreign_genes, changes=PREDICTED),
    "predict/no_requested_gene_in_model": Case(
        "predict", slide, {"genes": ["Olfr1", "Olfr2"]}, ValueError,
        rf"None of the requested genes is in the model's vocabulary of {N_GENES} genes: \['Olfr1', 'Olfr2'\]",
    ),
    "predict/duplicated_obs_names": Case("predict", duplicated_obs, {}, ValueError, r"obs_names_make_unique"),
    "predict/empty_table": Case("predict", empty_table, {}, ValueError, r"no observations"),
    "predict/truncated_checkpoint": Case(
        "predict", slide, lambda c: {"model": c.truncated}, CheckpointError, r"truncated"
    ),
    "predict/hash_mismatched_checkpoint": Case(
        "predict", slide, lambda c: {"model": c.tampered}, CheckpointError, r"integrity"
    ),
    # The spatial context runs once per batch of predictions, whichever of the readout or the head predicts.
    "predict/interrupted_on_2nd_batch": Case(
        "predict", slide, {"batch_size": BATCH}, KeyboardInterrupt, "call 2",
        interrupt=interrupt_on_call("context", 2),
    ),
    "predict/invalid_table_name": Case(
        "predict", slide, {"key_added": "pred/1"}, ValueError, r"`key_added=.pred/1.` is not a valid SpatialData element name"
    ),
    # ---- st.tl.storm_domains
    "domains/nan_in_embedding": Case(
        "domains", embedded(lambda n: np.where(np.arange(n * 4).reshape(n, 4) == 5, np.nan, 1.0)),
        {"n_domains": 2}, ValueError, r"\.obsm\['X_storm'\] must be a finite 2-D array",
    ),
    "domains/more_domains_than_obs": Case(
        "domains", embedded(lambda n: np.random.default_rng(0).normal(size=(n, 4))), {"n_domains": N_OBS + 1},
        ValueError, rf"`n_domains`={N_OBS + 1} exceeds the number of observations \({N_OBS}\)",
    ),
    "domains/duplicated_obs_names": Case("domains", duplicated_obs, {"n_domains": 2}, ValueError,
                                         r"obs_names_make_unique"),  # fmt: skip
    "domains/table_key_in_a_list": Case(
        "domains", slide, {"table_key": ["table"]}, TypeError, r"`table_key` must be a name.*pass table_key='table'"
    ),
    "domains/empty_table": Case("domains", empty_table, {"n_domains": 2}, ValueError, r"no observations"),
    "domains/two_slides_second_without_embedding": Case(
        "domains", lambda c: [embedded(lambda n: np.ones((n, 3)))(c), slide(seed=5)], {"n_domains": 2},
        KeyError, r"\.obsm\['X_storm'\] not found; run st.tl.storm_embed first",
    ),
    "domains/image_in_other_coordinate_system_is_not_needed": Case(
        "domains",
        lambda c: image_elsewhere(embedded(lambda n: np.random.default_rng(0).normal(size=(n, 4)))(c)),
        {"n_domains": 2},
        changes=frozenset(
            {"tables['table'].obs['storm_domain'] added", "tables['table'].uns['storm'] added",
             "tables['table'].uns['storm_domain_colors'] added"}  # fmt: skip
        ),
    ),
    "domains/uns_storm_not_a_dict": Case(
        "domains", lambda c: _with_embedding(uns_storm_not_a_dict(c)), {"n_domains": 2}, TypeError,
        r"\.uns\['storm'\] is a str, not a dict",
    ),
    "domains/positions_only_anndata_after_embed": Case(
        "domains", lambda c: _with_embedding(positions_only(c)), {"n_domains": 3, "mpp": 1.0},
        changes=frozenset({"adata.obs['storm_domain'] added", "adata.uns['storm'] added",
                           "adata.uns['storm_domain_colors'] added"}),
    ),
    # ---- st.io.resolve (the io tests hold the full resolve corpus; here the cases added with this one)
    "resolve/image_placed_10x_too_large": Case("resolve", image_scaled_10x, {}, ValueError, r"0.1x off"),
    "resolve/image_cropped_at_the_edge": Case(
        "resolve", image_cropped, {}, warns=r"8 of 80 observations .* lie outside image 'toy_image'"
    ),
    "resolve/uns_storm_is_a_number": Case("resolve", lambda c: _uns_storm(slide(), 3)),
    "resolve/image_key_with_use_image_false": Case(
        "resolve", slide, {"image_key": "toy_image", "use_image": False}, ValueError, r"asks for none; drop one"
    ),
    # ---- st.models.StormModel.load
    "load/truncated": Case("load", checkpoint_file("truncated"), {}, CheckpointError, r"truncated"),
    "load/hash_mismatch": Case("load", checkpoint_file("tampered"), {}, CheckpointError, r"integrity check"),
    "load/empty_file": Case(
        "load", lambda c: _write(c.tmp / "empty.safetensors", b""), {}, CheckpointError, r"not a readable"
    ),
    "load/not_a_checkpoint": Case(
        "load", lambda c: _write(c.tmp / "notes.safetensors", b"{\"a\": 1}" * 20), {}, CheckpointError,
        r"not a readable STORM checkpoint",
    ),
}  # fmt: skip


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _run(call: str, data: Any, model: StormModel, kwargs: dict[str, Any]) -> Any:
    if call == "embed":
        return st.tl.storm_embed(data, kwargs.pop("model", model), verbose=False, **kwargs)
    if call == "predict":
        return st.tl.predict_expression(data, kwargs.pop("model", model), verbose=False, **kwargs)
    if call == "domains":
        return st.tl.storm_domains(data, **kwargs)
    if call == "resolve":
        return st.io.resolve(data, **kwargs)
    if call == "load":
        return StormModel.load(data, **kwargs)
    raise AssertionError(call)


def _state(call: str, data: Any) -> Any:
    if call == "load":
        return data.read_bytes() if data.exists() else None
    return snapshot(data)


def _changes(call: str, before: Any, data: Any) -> set[str]:
    if call == "load":
        now = data.read_bytes() if data.exists() else None
        return set() if now == before else {"the checkpoint file changed"}
    return set(differences(before, data))


def _params() -> list:
    return [pytest.param(n, marks=c.marks) if isinstance(c, ParameterSet) else n for n, c in CASES.items()]


@pytest.mark.parametrize("name", _params())
def test_bad_input(name, storm_tiny, tmp_path, storm_log):
    case = CASES[name]
    if isinstance(case, ParameterSet):
        case = case.values[0]
    ctx = Ctx(storm_tiny, tmp_path)
    data = case.build(ctx)
    kwargs = dict(case.kwargs(ctx) if callable(case.kwargs) else case.kwargs)
    before = _state(case.call, data)
    digest, training = storm_tiny.weights_digest(), storm_tiny.network.training
    interrupt = case.interrupt(storm_tiny) if case.interrupt is not None else nullcontext()

    with interrupt:
        if case.raises is not None:
            with pytest.raises(case.raises, match=case.match):
                _run(case.call, data, storm_tiny, kwargs)
        else:
            _run(case.call, data, storm_tiny, kwargs)

    assert _changes(case.call, before, data) == set(case.changes)
    assert storm_tiny.weights_digest() == digest, "the model's weights changed"
    assert storm_tiny.network.training == training
    assert not storm_tiny.network._forward_hooks
    if case.warns is not None:
        warned = [r.getMessage() for r in storm_log.records if r.levelname == "WARNING"]
        assert any(re.search(case.warns, w) for w in warned), warned
    if case.changes and case.call == "embed":
        emb = data["table"].obsm["X_storm"]
        assert emb.shape[0] == data["table"].n_obs and np.isfinite(emb).all()


def test_the_comparison_sees_every_kind_of_change():
    """The corpus relies on ``differences``: it must notice in-place edits, additions and replacements."""
    sdata = slide()
    sdata["table"].obsm["X_old"] = np.zeros((N_OBS, 2))
    sdata["table"].uns["storm"] = {"X_old": {"n": 1}}
    before = snapshot(sdata)
    assert differences(before, sdata) == []
    sdata["table"].obsm["X_old"][0, 0] = 1.0  # in place
    sdata["table"].uns["storm"]["X_old"]["n"] = 2  # nested
    sdata["table"].obs["new"] = 1
    sdata["table"].X[0, 0] += 1
    sdata.attrs["storm_sc"]["mpp"] = 3.0
    set_transformation(sdata.shapes["toy_spots"], Scale([2.0, 2.0], axes=("x", "y")), "global")
    sdata.images["toy_image"] = sdata.images["toy_image"].copy()
    sdata.tables["extra"] = sdata["table"].copy()
    assert set(differences(before, sdata)) == {
        "tables['table'].obsm['X_old'] changed",
        "tables['table'].uns['storm']['X_old']['n'] changed",
        "tables['table'].obs['new'] added",
        "tables['table'].X changed",
        "attrs['storm_sc']['mpp'] changed",
        "shapes['toy_spots']: transformations changed",
        "images['toy_image']: replaced",
        "tables['extra'] added",
    }
    adata = positions_only(None)
    before = snapshot(adata)
    adata.obsm["spatial"][3] = np.nan
    adata.var_names = [f"g{i}" for i in range(N_GENES)]
    assert set(differences(before, adata)) == {"adata.obsm['spatial'] changed", "adata.var_names changed"}


def test_positions_only_resolution_ignores_an_unusable_image():
    sdata = image_in_other_cs(None)
    before = snapshot(sdata)
    with pytest.raises(ValueError, match="shares a coordinate system"):
        st.io.resolve(sdata)
    si = st.io.resolve(sdata, use_image=False)
    assert not si.has_image and si.centers_px is None and si.mpp is None
    np.testing.assert_allclose(si.centers_um, st.io.resolve(slide()).centers_um)
    assert differences(before, sdata) == []
