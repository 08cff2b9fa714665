import pytest

import storm_sc as st
from storm_sc.models import StormConfig, get_config, list_configs, register_config


def test_registry_lists_the_three_named_configs():
    assert {"storm-tiny", "storm-small", "storm-base"} <= set(list_configs())
    tiny, small, base = (get_config(n) for n in ("storm-tiny", "storm-small", "storm-base"))
    assert tiny.hidden_dim < small.hidden_dim < base.hidden_dim
    assert base.morphology == "vit"
    assert small.morphology == "cnn"


def test_overrides_rename_and_validate():
    cfg = get_config("storm-tiny", region_k=3)
    assert cfg.region_k == 3
    assert cfg.name == "storm-tiny+custom"
    with pytest.raises(ValueError, match="Unknown STORM config field"):
        get_config("storm-tiny", not_a_field=1)
    # a KeyError as before, and a ValueError as the recipe's `model:` reports it
    for make in (get_config, lambda name: st.models.StormModel(name, ["A"])):
        for kind in (KeyError, ValueError):
            with pytest.raises(kind, match=r"^No STORM config named 'storm-huge'; registered \(st.models.list_configs"):
                make("storm-huge")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_dim": 30, "heads": 4}, "divisible"),
        ({"morphology": "resnet"}, "morphology"),
        ({"morphology": "features"}, "feature_dim"),
        ({"morphology": "module"}, "backbone_dim"),
        ({"dropout": 1.5}, "dropout"),
        ({"dropout": "x"}, r"`dropout` must be a number in \[0, 1\) \(got 'x'\)"),
        ({"logvar_min": "a"}, r"`logvar_min` must be a finite number \(got 'a'\)"),
        ({"logvar_max": float("nan")}, r"`logvar_max` must be a finite number \(got nan\)"),
        ({"position_min_um": 5000.0}, "position_min_um"),
        ({"cnn_stem_stride": 3}, "cnn_stem_stride"),
        ({"max_genes": 0}, "max_genes"),
    ],
)
def test_invalid_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        StormConfig(**changes)


def test_dict_round_trip_and_unknown_fields():
    cfg = get_config("storm-small")
    assert StormConfig.from_dict(cfg.to_dict()) == cfg
    data = cfg.to_dict() | {"from_the_future": 1}
    with pytest.raises(ValueError, match="newer storm_sc"):
        StormConfig.from_dict(data)


def test_register_config_is_one_entry():
    cfg = get_config("storm-tiny").replace(name="test-register-tiny", embed_dim=8)
    register_config(cfg)
    try:
        assert get_config("test-register-tiny").embed_dim == 8
        with pytest.raises(ValueError, match="already registered"):
            register_config(cfg)
        model = st.models.StormModel("test-register-tiny", ["A", "B"])
        assert model.config.embed_dim == 8
    finally:
        from storm_sc.models._registry import _CONFIGS

        _CONFIGS.pop("test-register-tiny", None)
