"""The sweep wiring on a small real codec: determinism, pairing of methods, table contents."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import random_images, tiny_codec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqnet.chroma import is_chroma_packet
from vqnet.codec.bundle import Codec
from vqnet.images import NamedImage
from vqnet.journal import PARTIAL_NAME, JournalError, make_line, read_line
from vqnet.plots import plot_examples, plot_lpips_vs_loss
from vqnet.receiver import receive
from vqnet.scenario import parse_scenario
from vqnet.sender import PacketSettings
from vqnet.summary import SUMMARY_COLUMNS, mean_interval
from vqnet.sweep import (
    PROTECTED_COLUMNS,
    RESULT_COLUMNS,
    GridScorer,
    TrialJournal,
    TrialRecord,
    as_written,
    encode_image,
    run_sweep,
    sweep_fingerprint,
    sweep_summary,
    trial_seed,
    write_results,
)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return tiny_codec()


@pytest.fixture(scope="module")
def images() -> list[NamedImage]:
    return random_images()


SCENARIO = {
    "name": "t",
    "seed": 7,
    "K": [32],
    "trials": 2,
    "packets": {"max_payload": 8, "layout": "interleaved"},
    "channel": {"model": "gilbert", "loss": [0.2, 0.6], "burst": [3]},
    "methods": ["none", "neighbor"],
    "examples": {"losses": [0.6]},
}


def test_sweep_table_and_pairing(codec, images):
    out = run_sweep(parse_scenario(SCENARIO), codec, images)
    df = out.results
    assert list(df.columns) == RESULT_COLUMNS
    assert len(df) == 2 * 2 * 2 * 2  # images x losses x trials x methods
    assert (df["bytes_sent"] > 0).all() and (df["n_packets"] >= 5).all()
    # bpp counts every byte sent (headers included) over the original pixels
    assert np.allclose(df["bpp"], df["bytes_sent"] * 8 / (40 * 52))
    # both methods see the same channel realisation at each key
    key = ["image", "target_loss", "trial"]
    per_key = df.groupby(key)[["packets_lost", "index_loss"]].nunique()
    assert (per_key == 1).all().all()
    # received indices were not touched: with no lost index the methods agree exactly
    intact = df[df["index_loss"] == 0]
    assert (intact["lpips"] == intact["lossless_lpips"]).all()
    assert set(out.examples) == {("none", 0.6), ("neighbor", 0.6)}


def test_sweep_is_deterministic(codec, images, tmp_path):
    sc = parse_scenario(SCENARIO)
    a = write_results(run_sweep(sc, codec, images), tmp_path / "a")["results"].read_bytes()
    b = write_results(run_sweep(sc, codec, images), tmp_path / "b")["results"].read_bytes()
    assert a == b
    other = parse_scenario(dict(SCENARIO, seed=8))
    c = write_results(run_sweep(other, codec, images), tmp_path / "c")["results"].read_bytes()
    assert c != a


def test_only_protected_tables_carry_the_protection_columns(codec, images, tmp_path):
    """An unprotected sweep writes the tables vqnet wrote before FEC and ARQ (the committed results
    stay valid); parity, ARQ or schemes add the scheme and protection columns."""
    plain = parse_scenario(SCENARIO)
    out = run_sweep(plain, codec, images)
    paths = write_results(out, tmp_path / "plain", sweep_summary(plain, out.results))
    assert paths["results"].read_text().splitlines()[0] == ",".join(RESULT_COLUMNS)
    assert "scheme" not in paths["summary"].read_text().splitlines()[0].split(",")
    for extra in ({"packets": dict(SCENARIO["packets"], fec={"parity": 0.5})}, {"link": {"arq": {}}}):
        protected = parse_scenario(SCENARIO | extra)
        out = run_sweep(protected, codec, images)
        assert list(out.results.columns) == PROTECTED_COLUMNS and (out.results["scheme"] == "K=32").all()
        assert list(sweep_summary(protected, out.results).columns) == SUMMARY_COLUMNS


def test_trial_seed_is_stable_and_key_sensitive():
    assert trial_seed(1, "a", 256, 0.1, 4.0, 0) == trial_seed(1, "a", 256, 0.1, 4.0, 0)
    assert trial_seed(1, "a", 256, 0.1, 4.0, 0) != trial_seed(1, "a", 256, 0.1, 4.0, 1)
    assert 0 <= trial_seed(2**32 - 1, "x") < 2**63


def test_plots_and_summary(codec, images, tmp_path):
    sc = parse_scenario(SCENARIO)
    out = run_sweep(sc, codec, images)
    summary = sweep_summary(sc, out.results)
    assert list(summary.columns) == [c for c in SUMMARY_COLUMNS if c != "scheme"] and len(summary) == 2 * 2
    assert set(summary["method"]) == {"none", "neighbor"} and (summary["n"] == 4).all()
    assert (summary["trials"] == 2).all() and (summary["stop"] == "fixed").all()
    assert (summary["lpips_ci95"] >= 0).all() and (summary["reference"] == "neighbor").all()
    # the paired difference is the mean over (image, trial) of none - neighbor, with its t interval,
    # computed on the table as written (six digits), so summarize on results.csv gives it back
    df = as_written(out.results)
    for _, row in summary[summary["method"] == "none"].iterrows():
        at = df[df["target_loss"] == row["target_loss"]]
        d = (
            at[at["method"] == "none"].set_index(["image", "trial"])["lpips"]
            - at[at["method"] == "neighbor"].set_index(["image", "trial"])["lpips"]
        )
        m, lo, hi = mean_interval(d.to_numpy())
        assert (row["diff"], row["diff_lo"], row["diff_hi"]) == pytest.approx((m, lo, hi), nan_ok=True)
        assert row["wins"] + row["losses"] + row["ties"] == 4 and row["wins"] == (d < 0).sum()
        assert row["dlpips"] == pytest.approx((at[at["method"] == "none"]["lpips"] - at["lossless_lpips"]).mean())
    assert summary[summary["method"] == "neighbor"]["diff"].isna().all()  # the reference itself
    png = plot_lpips_vs_loss(summary, tmp_path / "p.png", "t")
    ex = plot_examples(out, tmp_path / "e.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ex is not None and ex.stat().st_size > 1000


def test_missing_k_fails_before_work(codec, images):
    from vqnet.codec.bundle import CodecError

    with pytest.raises(CodecError, match="K=64"):
        run_sweep(parse_scenario(dict(SCENARIO, K=[64])), codec, images)


def test_resume_from_a_torn_journal_gives_the_same_table(codec, images, tmp_path, monkeypatch):
    sc = parse_scenario(SCENARIO)
    fp = sweep_fingerprint(sc, codec, images)
    with TrialJournal.open(tmp_path / "a" / PARTIAL_NAME, fp) as journal:
        full = run_sweep(sc, codec, images, journal=journal)
    lines = (tmp_path / "a" / PARTIAL_NAME).read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 2 * 2 * 2  # fingerprint + images x losses x trials (methods share a line)
    # killed after three trials, in the middle of writing the fourth
    partial = tmp_path / "b" / PARTIAL_NAME
    partial.parent.mkdir()
    partial.write_bytes(b"".join(lines[:4]) + lines[4][:25])
    with TrialJournal.open(partial, fp) as journal:
        assert len(journal.done) == 3
        resumed = run_sweep(sc, codec, images, journal=journal)
    a = write_results(full, tmp_path / "a")["results"].read_bytes()
    assert write_results(resumed, tmp_path / "b")["results"].read_bytes() == a
    journalled = [read_line(line)["key"] for line in lines[1:4]]
    kept = [
        (t["image"], t["target_loss"], t["trial"]) in {(k[0], k[2], k[4]) for k in journalled}
        for _, t in full.timings.iterrows()
    ]
    assert sum(kept) == 6  # three trials x two methods, kept, not re-measured:
    pd.testing.assert_frame_equal(resumed.timings[kept], full.timings[kept])
    assert set(resumed.examples) == set(full.examples)  # the example trial was rerun for its picture
    entries = [read_line(line) for line in partial.read_bytes().splitlines()[1:]]
    keys = [json.dumps(e["key"]) for e in entries]
    assert partial.read_bytes().endswith(b"\n") and len(keys) == len(set(keys)) == 8  # torn line gone, no repeats
    # a complete journal runs nothing but the example trial: only the example image is encoded
    encoded = []
    monkeypatch.setattr(codec, "encode_latent", lambda px: encoded.append(px.shape) or Codec.encode_latent(codec, px))
    with TrialJournal.open(partial, fp) as journal:
        again = run_sweep(sc, codec, images, journal=journal)
    assert len(encoded) == 1 and write_results(again, tmp_path / "c")["results"].read_bytes() == a


def test_journal_of_another_sweep_is_refused_unless_fresh(codec, images, tmp_path):
    sc = parse_scenario(SCENARIO)
    path = tmp_path / PARTIAL_NAME
    fp = sweep_fingerprint(sc, codec, images)
    with TrialJournal.open(path, fp) as journal:
        journal.append(TrialJournal.key("img0", "K=32", 0.2, 3.0, 0), _record("img0", 0))
    with TrialJournal.open(path, fp) as journal:
        assert journal.done[TrialJournal.key("img0", "K=32", 0.2, 3.0, 0)].timings == [{"decode_ms": 1.5}]
    other = sweep_fingerprint(parse_scenario(dict(SCENARIO, seed=8)), codec, images)
    with pytest.raises(JournalError, match="another scenario.*--fresh"):
        TrialJournal.open(path, other)
    with TrialJournal.open(path, other, fresh=True) as journal:
        assert not journal.done
    # the number of trials is not in a trial's rows: raising it resumes from the journal
    more = parse_scenario(dict(SCENARIO, trials={"min": 2, "max": 6, "precision": 0.01}, description="more"))
    assert sweep_fingerprint(more, codec, images) == fp
    changed_pixels = [NamedImage(images[0].name, images[0].pixels ^ 1), images[1]]
    assert (
        len(
            {
                fp,
                sweep_fingerprint(sc, codec, images[:1]),
                sweep_fingerprint(sc, codec, changed_pixels),
                sweep_fingerprint(sc, replace(codec, model_id="0123456789abcdef"), images),
            }
        )
        == 4
    )


def _record(image: str, trial: int, **values: object) -> TrialRecord:
    """A well-formed trial record of key (image, "K=32", 0.2, 3.0, trial) with one method."""
    row = {c: 0.5 for c in PROTECTED_COLUMNS} | {
        "image": image,
        "K": 32,
        "scheme": "K=32",
        "trial": trial,
        "layout": "interleaved",
        "channel": "gilbert",
        "method": "none",
    }
    return TrialRecord([row | values], [{"decode_ms": 1.5}])


def test_damaged_or_malformed_journal_lines_are_not_trusted(tmp_path):
    path = tmp_path / PARTIAL_NAME
    with TrialJournal.open(path, "f") as journal:
        for trial in range(7):
            journal.append(TrialJournal.key("img0", "K=32", 0.2, 3.0, trial), _record("img0", trial))
    lines = path.read_bytes().splitlines(keepends=True)

    def forged(trial: int, **changes: object) -> bytes:
        entry = read_line(lines[1 + trial]) | changes
        return make_line(entry)

    lines[1] = lines[1].replace(b'"lpips": 0.5', b'"lpips": 0.1')  # edited by hand: checksum fails
    lines[2] = forged(1, rows=[], timings=[])  # valid checksum, but the trial has no rows
    lines[3] = forged(2, rows=[_record("img0", 2, lpips="low").rows[0]])  # a score that is no number
    lines[4] = forged(3, rows=[_record("img1", 3).rows[0]])  # a row of another image under this key
    lines[5] = lines[5][:40] + lines[6]  # two writers' lines fused
    path.write_bytes(b"".join(lines) + lines[7])  # ... and a repeated line
    with TrialJournal.open(path, "f") as journal:
        assert journal.dropped == 6
        assert list(journal.done) == [TrialJournal.key("img0", "K=32", 0.2, 3.0, t) for t in (5, 6)]
    with TrialJournal.open(path, "f") as journal:  # rewritten without them
        assert journal.dropped == 0 and len(journal.done) == 2


@given(
    st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "swap"]), st.integers(0, 10**6), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_damage_to_a_journal_makes_it_hand_back_a_unit_it_was_not_given(tmp_path, edits):
    """Whatever bytes change, each unit read back is one that was written under its key, or the
    journal is refused as a whole (a damaged first line); never a changed row."""
    path = tmp_path / PARTIAL_NAME
    path.unlink(missing_ok=True)
    written = {TrialJournal.key("img0", "K=32", 0.2, 3.0, t): _record("img0", t, lpips=t / 10) for t in range(5)}
    with TrialJournal.open(path, "f") as journal:
        for key, record in written.items():
            journal.append(key, record)
    data = bytearray(path.read_bytes())
    for op, at, byte in edits:
        at %= len(data) + 1
        if op == "flip" and at < len(data):
            data[at] ^= 1 << (byte % 8)
        elif op == "cut":
            del data[at : at + byte % 40]
        elif op == "insert":
            data[at:at] = bytes([byte]) * (1 + byte % 3)
        elif op == "swap" and data.count(b"\n") > 2:
            lines = bytes(data).split(b"\n")
            i = 1 + at % (len(lines) - 2)
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
            data = bytearray(b"\n".join(lines))
    path.write_bytes(bytes(data))
    try:
        with TrialJournal.open(path, "f") as journal:
            assert all(written[key] == unit for key, unit in journal.done.items())
    except JournalError as exc:
        assert "not a sweep journal" in str(exc)


@pytest.mark.parametrize("content", [b"not json\n", b'{"fingerprint": "f"}\n'])  # none, and format 1
def test_a_file_that_is_no_journal_of_this_format_is_refused(tmp_path, content):
    (tmp_path / PARTIAL_NAME).write_bytes(content)
    with pytest.raises(JournalError, match="not a sweep journal of this vqnet.*--fresh"):
        TrialJournal.open(tmp_path / PARTIAL_NAME, "f")


def test_fingerprint_covers_the_content_of_the_loss_trace(codec, images, tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("0 1 0 0 1 1 0 0\n")
    sc = parse_scenario(dict(SCENARIO, channel={"model": "trace", "params": {"path": str(trace)}}))
    before = sweep_fingerprint(sc, codec, images)
    trace.write_text("1 1 0 0 1 1 0 0\n")  # same path, same scenario: other losses
    assert sweep_fingerprint(sc, codec, images) != before


def test_colour_packet_crosses_the_channel_like_any_packet(codec):
    img = np.zeros((40, 52, 3), dtype=np.uint8)
    img[:, :26], img[:, 26:] = (220, 30, 30), (30, 30, 220)  # red | blue: colour the tiny decoder lacks
    base = dict(
        SCENARIO,
        trials=3,
        channel={"model": "bernoulli", "loss": [0.0, 0.5]},
        packets={"max_payload": 64, "layout": "interleaved"},
    )
    coloured = dict(base, packets={"max_payload": 64, "layout": "interleaved", "chroma_cells": 1})
    plain = run_sweep(parse_scenario(base), codec, [NamedImage("c", img)]).results
    col = run_sweep(parse_scenario(coloured), codec, [NamedImage("c", img)]).results
    assert (col["n_packets"] == plain["n_packets"] + 1).all() and (col["bytes_sent"] > plain["bytes_sent"]).all()
    assert col["lossless_psnr"].iloc[0] > plain["lossless_psnr"].iloc[0] + 3
    clean = col[col["target_loss"] == 0]
    assert (clean["index_loss"] == 0).all() and (clean["psnr"] == clean["lossless_psnr"]).all()
    # the receiver colours a grid only when the colour packet arrived
    enc = encode_image(
        codec, NamedImage("c", img), codec.encode_latent(img), 32, PacketSettings(64, "interleaved", 1), 0
    )
    sent = enc.sent
    assert is_chroma_packet(sent.packets[-1]) and sent.colour is not None
    scorer = GridScorer(codec, enc)
    everything = receive(codec, sent.wire, 32, sent.size)
    [(_, lp, ps, _, _)] = scorer.score([sent.indices], everything)
    assert (lp, ps) == (enc.lossless_lpips, enc.lossless_psnr)
    no_colour = receive(codec, sent.wire[:-1], 32, sent.size)
    assert not no_colour.lost.any() and scorer.score([sent.indices], no_colour)[0][2] < ps - 3


def test_adaptive_trials_stop_on_precision_or_at_max(codec, images, tmp_path):
    """A loose precision stops every point at min; an unreachable one runs the lossy point to max,
    while a point where nothing is lost (every difference 0) resolves at min."""
    # neighbor against none: the tiny codec has no transformers, and none is compared only as reference
    base = dict(SCENARIO, channel={"model": "bernoulli", "loss": [0.0, 0.6]}, compare_to="none")
    loose = parse_scenario(dict(base, trials={"min": 2, "max": 5, "precision": 1.0}))
    tight = parse_scenario(dict(base, trials={"min": 2, "max": 5, "precision": 1e-9}))
    s_loose = sweep_summary(loose, run_sweep(loose, codec, images).results)
    out = run_sweep(tight, codec, images)
    s_tight = sweep_summary(tight, out.results)
    assert (s_loose["trials"] == 2).all() and (s_loose["stop"] == "precision").all()
    assert dict(zip(s_tight["target_loss"], s_tight["trials"])) == {0.0: 2, 0.6: 5}
    assert dict(zip(s_tight["target_loss"], s_tight["stop"])) == {0.0: "precision", 0.6: "max"}
    assert (s_tight["n"] == 2 * s_tight["trials"]).all()  # every image ran every trial of its point
    # deterministic: a second run writes the same bytes
    again = run_sweep(tight, codec, images)
    a = write_results(out, tmp_path / "a", s_tight)
    b = write_results(again, tmp_path / "b", sweep_summary(tight, again.results))
    assert a["results"].read_bytes() == b["results"].read_bytes()
    assert a["summary"].read_bytes() == b["summary"].read_bytes()


@pytest.mark.parametrize("pattern,size", [("iid", None), ("burst", 3), ("block", 2)])
def test_mask_channel_loses_exactly_round_r_n_indices(codec, images, pattern, size):
    channel = {"model": "mask", "loss": [0.1, 0.35, 0.7], "pattern": pattern} | ({"burst": [size]} if size else {})
    sc = parse_scenario(dict(SCENARIO, channel=channel, trials=2))
    df = run_sweep(sc, codec, images).results
    n = 10 * 13  # the tiny f=4 codec's grid for a 40 x 52 image
    assert (df["index_loss"] * n).round(9).isin([round(r * n) for r in (0.1, 0.35, 0.7)]).all()
    for r in (0.1, 0.35, 0.7):
        assert np.allclose(df[df["target_loss"] == r]["index_loss"], round(r * n) / n, atol=1e-12)
    assert (
        (df["packets_lost"] == 0).all()
        and df["packet_loss"].isna().all()
        and (df["channel"] == f"mask-{pattern}").all()
    )
    assert (df["bytes_sent"] > 0).all()  # packets are still built and counted in bpp
