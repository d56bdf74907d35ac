"""Scenario validation: good files parse, every bad one is a single line naming the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vqnet.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[1]
BASE = {"name": "t", "channel": {"model": "gilbert", "loss": [0.1, 0.7], "burst": [4]}}


@pytest.mark.parametrize("path", sorted((REPO / "scenarios").glob("*.yaml")))
def test_shipped_scenarios_are_valid(path):
    sc = load_scenario(path)
    assert sc.name == path.stem and sc.channel.points()


def test_bursty_sweeps_10_to_70_percent():
    sc = load_scenario(REPO / "scenarios" / "bursty.yaml")
    assert [p[0] for p in sc.channel.points()] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert sc.channel.model == "gilbert" and all(b > 1 / (1 - 0.7) for _, b in sc.channel.points())


def _with(path: str, value):
    data = {"name": "t", "channel": {"model": "gilbert", "loss": [0.1, 0.7], "burst": [4]}}
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


BAD = [
    ("name", "has space", "name"),
    ("name", "", "name"),
    ("name", "..", "not a folder name"),  # results would land beside --out, not in it
    ("name", ".", "not a folder name"),
    ("name", "../x", "name"),
    ("channel", {"model": "trace", "params": {"path": 5}}, "must be a file name"),
    ("channel", {"model": "trace", "params": {"path": "/dev/zero"}}, "not a regular file"),  # never ends
    ("seed", -1, "seed"),
    ("trials", 0, "trials"),
    ("K", [], "K"),
    ("K", [1], "K"),
    ("K", ["many"], "K"),
    ("methods", ["magic"], "methods"),
    ("methods", ["none", "none"], "methods"),
    ("packets.max_payload", 3, "packets.max_payload"),
    ("packets.layout", "zigzag", "packets.layout"),
    ("packets.extra", 1, "packets.extra"),
    ("channel.model", "carrier-pigeon", "channel.model"),
    ("channel.loss", [1.2], "channel"),
    ("channel.loss", [-0.1], "channel"),
    ("channel.burst", [0.5], "channel"),
    ("channel.burst", [1.5], "infeasible"),  # 0.7 loss needs burst >= 2.33
    ("channel.params", {"p": 0.1}, "params"),
    ("link.rate_bps", 0, "link.rate_bps"),
    ("link.delay_s", -1, "link.delay_s"),
    ("link.jitter_s", 1.0, "jitter"),
    ("link.queue_limit", -2, "link.queue_limit"),
    ("images.limit", 0, "images.limit"),
    ("images.names", ["lena"], "images.names"),
    ("typo_field", 1, "typo_field"),
]


@pytest.mark.parametrize("path,value,needle", BAD)
def test_bad_scenarios_give_one_line_naming_the_field(path, value, needle):
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(_with(path, value), "s.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("s.yaml: ") and needle in msg


def test_model_specific_axes():
    with pytest.raises(ScenarioError, match="needs a list of mean burst"):
        parse_scenario({"name": "t", "channel": {"model": "gilbert", "loss": [0.1]}})
    with pytest.raises(ScenarioError, match="only to gilbert and to mask"):
        parse_scenario({"name": "t", "channel": {"model": "bernoulli", "loss": [0.1], "burst": [3]}})
    ge = parse_scenario({"name": "t", "channel": {"model": "gilbert_elliott", "params": {"p": 0.1, "r": 0.5}}})
    assert ge.channel.points() == [(None, None)]
    assert abs(ge.channel.loss_model(None, None).expected_loss - 0.1 / 0.6) < 1e-12


def test_mask_channel_and_adaptive_trials():
    sc = parse_scenario(
        {
            "name": "t",
            "methods": ["none", "ar"],
            "trials": {"min": 2, "max": 9, "precision": 0.01},
            "channel": {"model": "mask", "loss": [0.1, 0.3], "pattern": "block", "burst": [2]},
        }
    )
    assert sc.channel.points() == [(0.1, 2.0), (0.3, 2.0)] and sc.channel.loss_model(0.3, 2.0).name == "mask-block"
    assert sc.max_trials == 9 and sc.reference == "none"  # no neighbor swept: the first method
    assert parse_scenario({"name": "t", "methods": ["ar", "neighbor"]}).reference == "neighbor"
    iid = parse_scenario({"name": "t", "channel": {"model": "mask", "loss": [0.2]}})
    assert iid.channel.points() == [(0.2, None)] and iid.channel.loss_model(0.2, None).pattern == "iid"
    for bad, needle in [
        ({"channel": {"model": "mask", "loss": [0.2], "pattern": "burst"}}, "burst sizes"),
        ({"channel": {"model": "mask", "loss": [0.2], "burst": [2]}}, "not model mask, pattern iid"),
        ({"channel": {"model": "bernoulli", "loss": [0.2], "pattern": "iid"}}, "only to model mask"),
        ({"trials": {"min": 5, "max": 3}}, "trials: max (3) is below min (5)"),
        ({"trials": {"min": 1, "max": 3}}, "trials.min"),
        ({"trials": True}, "trials"),
        ({"compare_to": "masked"}, "compare_to 'masked' is not one of the methods"),
    ]:
        with pytest.raises(ScenarioError, match=re.escape(needle)):
            parse_scenario({"name": "t"} | bad)


def test_file_errors(tmp_path):
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="invalid YAML at line"):
        load_scenario(tmp_path / "broken.yaml")
    (tmp_path / "twice.yaml").write_text("name: a\nchannel: {model: bernoulli, loss: [0.1], loss: [0.2]}\n")
    with pytest.raises(ScenarioError, match="invalid YAML at line 2: duplicate key 'loss'"):
        load_scenario(tmp_path / "twice.yaml")  # safe_load would keep the second silently
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ScenarioError, match="mapping"):
        load_scenario(tmp_path / "list.yaml")


def test_schema_has_descriptions_for_every_field():
    schema = Scenario.model_json_schema()
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name
    for sub in schema["$defs"].values():
        for name, prop in sub["properties"].items():
            assert prop.get("description"), f"{sub['title']}.{name}"
