"""The split: one partition routine (shared with Trainer.Splitter), the workflow's
train/validation/test split, ``split.json`` and the fingerprint guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnpflow import ConfigError
from nnpflow.errors import SchemaError
from nnpflow.io.manifest import write_manifest
from nnpflow.splitting import (SplitMismatchError, load_split, make_split, make_stable_split,
                               part_size, partition, structure_draw, write_split)
from nnpflow.stages import split as split_stage
from nnpflow.training.splitter import random_split

FP = "ab" * 32


def test_partition_slices_one_seeded_permutation():
    parts = partition(10, {"a": 3, "b": 2, "c": 4}, seed=7)
    order = np.random.default_rng(7).permutation(10)  # the documented definition
    assert parts["a"].tolist() == sorted(order[:3])
    assert parts["b"].tolist() == sorted(order[3:5])
    assert parts["c"].tolist() == sorted(order[5:9])
    assert list(parts) == ["a", "b", "c"] and all(v.dtype == np.int64 for v in parts.values())
    every = np.concatenate(list(parts.values()))
    assert len(set(every.tolist())) == 9  # disjoint; one structure unused
    with pytest.raises(ConfigError, match="ask for 11 structures but there are 10"):
        partition(10, {"a": 6, "b": 5}, seed=0)
    with pytest.raises(ConfigError, match="must be >= 0"):
        partition(10, {"a": -1}, seed=0)


def test_trainer_splitter_uses_the_same_partition():
    got = random_split(50, ["training", "validation", "test"], [0.8, 0.1, 0.1], seed=3)
    want = partition(50, {"training": 40, "validation": 5, "test": 5}, seed=3)
    assert list(got) == list(want)
    for part in want:
        np.testing.assert_array_equal(got[part], want[part])


@pytest.mark.parametrize("value, n, expected", [
    (0.1, 9, 1), (0.1, 240, 24), (0.25, 10, 2), (0, 10, 0), (0.0, 10, 0),
    (3, 10, 3), (3.0, 10, 3), (1, 10, 1), (np.int64(2), 10, 2),
])
def test_part_size_fractions_and_counts(value, n, expected):
    assert part_size(value, n) == expected


@pytest.mark.parametrize("value, message", [
    (1.5, "must be a whole number"), (-0.1, "fraction in \\[0, 1\\) or a count"),
    (True, "fraction in \\[0, 1\\) or a count"), ("0.1", "fraction in \\[0, 1\\) or a count"),
    (float("nan"), "fraction in \\[0, 1\\) or a count"),
])
def test_part_size_rejects_nonsense(value, message):
    with pytest.raises(ConfigError, match=message):
        part_size(value, 10, "test")


def test_make_split_parts_and_stability():
    s = make_split(100, validation=0.1, test=5, seed=42, structures_fingerprint=FP)
    assert s.counts == {"train": 85, "validation": 10, "test": 5}
    every = np.concatenate([s.train, s.validation, s.test])
    assert sorted(every.tolist()) == list(range(100))
    # the test part is drawn first: another validation size keeps it
    s2 = make_split(100, validation=0.3, test=5, seed=42, structures_fingerprint=FP)
    np.testing.assert_array_equal(s2.test, s.test)
    assert not np.array_equal(s2.validation, s.validation)
    s3 = make_split(100, validation=0.1, test=5, seed=43, structures_fingerprint=FP)
    assert not np.array_equal(s3.test, s.test)
    with pytest.raises(ConfigError, match="leave 0 of 10 structures for training"):
        make_split(10, validation=5, test=5, seed=0, structures_fingerprint=FP)


def test_split_stage_writes_a_split_that_load_split_checks(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"n_structures": 30, "structures_fingerprint": FP,
                                    "species": ["Cu"]}))
    out = tmp_path / "split" / "split.json"
    counts = split_stage.run(manifest_summary=str(manifest), split=str(out), validation=0.2,
                             test=3, seed=5, method="permutation")
    assert counts == {"train": 21, "validation": 6, "test": 3}
    data = json.loads(out.read_text())
    assert data["structures_fingerprint"] == FP and data["seed"] == 5
    assert data["n_structures"] == 30 and data["settings"] == {"validation": 0.2, "test": 3,
                                                               "method": "permutation"}
    assert data["fractions"] == {"train": 0.7, "validation": 0.2, "test": 0.1}
    # the same manifest gives the same file, byte for byte
    again = tmp_path / "again.json"
    split_stage.run(manifest_summary=str(manifest), split=str(again), validation=0.2, test=3,
                    seed=5, method="permutation")
    assert again.read_bytes() == out.read_bytes()

    loaded = load_split(out, expected_fingerprint=FP, n_structures=30)
    want = make_split(30, 0.2, 3, 5, FP)
    for part in ("train", "validation", "test"):
        np.testing.assert_array_equal(loaded.indices[part], want.indices[part])
    # the fingerprint may come as a database.json dict or anything with the attribute
    load_split(out, {"structures_fingerprint": FP})

    class Reader:
        structures_fingerprint = FP
    load_split(out, Reader())

    other = "cd" * 32
    with pytest.raises(SplitMismatchError, match=r"split.json was made for other structures: "
                                                 r"its structures fingerprint is abababab"):
        load_split(out, expected_fingerprint=other)
    with pytest.raises(SplitMismatchError, match="indexes 30 structures, the data has 31"):
        load_split(out, FP, n_structures=31)


def test_load_split_refuses_unknown_and_broken_files(tmp_path):
    s = make_split(10, 0.2, 0.2, 0, FP)
    path = tmp_path / "split.json"
    write_split(path, s)
    good = json.loads(path.read_text())

    def refused(data, message):
        bad = tmp_path / "bad.json"
        bad.write_text(data if isinstance(data, str) else json.dumps(data))
        with pytest.raises(SchemaError, match=message):
            load_split(bad, FP)

    refused("{not json", "not a JSON split file")
    refused({"indices": {}}, "not an nnpflow split file")
    refused(dict(good, schema_version=2), "split schema version 2 is not supported")
    refused({k: v for k, v in good.items() if k != "indices"}, "malformed split file")
    overlap = dict(good, indices=dict(good["indices"], test=good["indices"]["train"][:2]))
    refused(overlap, "indices out of range 0..9 or in two parts")
    beyond = dict(good, indices=dict(good["indices"], test=[10]))
    refused(beyond, "indices out of range")
    with pytest.raises(SchemaError, match="cannot read split file"):
        load_split(tmp_path / "missing.json")


def test_split_stage_names_a_bad_manifest(tmp_path):
    from nnpflow import InputError
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"n_structures": 3}))
    with pytest.raises(InputError, match="manifest.json: not a manifest summary"):
        split_stage.run(manifest_summary=str(bad), split=str(tmp_path / "s.json"))
    assert not Path(tmp_path / "s.json").exists()


# ---------------------------------------------------------------- the stable split

def _labels(names):
    """Labels and content hashes of made-up structures (the hash: the name's own)."""
    import hashlib
    return list(names), [hashlib.sha256(n.encode()).hexdigest() for n in names]


def _parts_by_label(split, labels):
    return {labels[i]: part for part in ("train", "validation", "test")
            for i in split.indices[part]}


def test_stable_split_is_a_fixed_function_of_seed_and_data():
    """Hard-coded expectations: the same seed and data give this split on any machine
    (SHA-256 of seed, label and content hash; no platform random generator)."""
    labels = [f"data/cell-{i}.xsf" for i in range(12)]
    hashes = [f"{i:064x}" for i in range(12)]
    assert structure_draw("data/cell-0.xsf", "0" * 64, 7) == pytest.approx(0.3387545834729143,
                                                                           abs=1e-15)
    s = make_stable_split(labels, hashes, validation=0.25, test=0.25, seed=7,
                          structures_fingerprint=FP)
    assert {p: v.tolist() for p, v in s.indices.items()} == {
        "train": [2, 3, 4, 6, 8, 9], "validation": [0, 1, 7, 11], "test": [5, 10]}
    assert s.settings == {"validation": 0.25, "test": 0.25, "method": "stable"}
    # another seed redraws
    other = make_stable_split(labels, hashes, 0.25, 0.25, 8, FP)
    assert _parts_by_label(other, labels) != _parts_by_label(s, labels)


def test_stable_split_keeps_every_part_when_files_are_added_or_removed():
    labels, hashes = _labels([f"batch1/s{i}.xsf" for i in range(300)])
    before = make_stable_split(labels, hashes, 0.1, 0.1, 42, FP)
    old = _parts_by_label(before, labels)
    # fractions hold approximately
    assert all(abs(before.fractions[p] - f) < 0.05 for p, f in
               (("train", 0.8), ("validation", 0.1), ("test", 0.1)))
    # a new batch of files, listed first and interleaved: no old structure moves
    new_labels, new_hashes = _labels([f"batch2/s{i}.xsf" for i in range(100)])
    merged = sorted(zip(labels + new_labels, hashes + new_hashes))
    grown = make_stable_split([m[0] for m in merged], [m[1] for m in merged], 0.1, 0.1, 42, FP)
    now = _parts_by_label(grown, [m[0] for m in merged])
    assert {lab: now[lab] for lab in labels} == old
    assert {now[lab] for lab in new_labels} == {"train", "validation", "test"}
    # a third of the files removed: the rest keep their parts
    kept = [k for k in range(300) if k % 3]
    shrunk = make_stable_split([labels[k] for k in kept], [hashes[k] for k in kept],
                               0.1, 0.1, 42, FP)
    now = _parts_by_label(shrunk, [labels[k] for k in kept])
    assert now == {labels[k]: old[labels[k]] for k in kept}
    # a structure whose content changed is a new structure: it may move, no other does
    changed = list(hashes)
    changed[0] = "0" * 64
    again = _parts_by_label(make_stable_split(labels, changed, 0.1, 0.1, 42, FP), labels)
    assert {k: v for k, v in again.items() if k != labels[0]} == \
        {k: v for k, v in old.items() if k != labels[0]}


def test_stable_split_small_sets_and_errors():
    labels, hashes = _labels([f"s{i}" for i in range(5)])
    s = make_stable_split(labels, hashes, validation=1, test=1, seed=0, structures_fingerprint=FP)
    # asked-for parts are never empty, training keeps the rest
    assert s.counts["validation"] >= 1 and s.counts["test"] >= 1 and s.counts["train"] >= 1
    assert sum(s.counts.values()) == 5
    with pytest.raises(ConfigError, match="leave nothing of 5 structures for training"):
        make_stable_split(labels, hashes, 0.5, 0.5, 0, FP)
    with pytest.raises(ConfigError, match="split.test must be"):
        make_stable_split(labels, hashes, 0.1, -1, 0, FP)


def test_split_stage_stable_method_reads_the_manifest(tmp_path):
    names = [f"d/c{i}.xsf" for i in range(40)]
    labels, hashes = _labels(names)
    rows = [{"label": lab, "unit": lab, "frame": "", "n_atoms": "2", "species": "Cu:2",
             "energy": "-1.0", "has_forces": "true", "content_hash": h}
            for lab, h in zip(labels, hashes)]
    write_manifest(tmp_path / "manifest.tsv", rows)
    (tmp_path / "manifest.json").write_text(json.dumps({"n_structures": 40,
                                                         "structures_fingerprint": FP}))
    out = tmp_path / "split.json"
    counts = split_stage.run(manifest_summary=str(tmp_path / "manifest.json"), split=str(out),
                             manifest=str(tmp_path / "manifest.tsv"), validation=0.2, test=0.1,
                             seed=3)
    want = make_stable_split(labels, hashes, 0.2, 0.1, 3, FP)
    assert counts == want.counts
    data = json.loads(out.read_text())
    assert data["settings"]["method"] == "stable"
    assert data["fractions"] == want.fractions and data["counts"] == want.counts
    loaded = load_split(out, FP, 40)
    for part in ("train", "validation", "test"):
        np.testing.assert_array_equal(loaded.indices[part], want.indices[part])
    from nnpflow import InputError
    (tmp_path / "manifest.json").write_text(json.dumps({"n_structures": 41,
                                                         "structures_fingerprint": FP}))
    with pytest.raises(InputError, match="lists 40 structures"):
        split_stage.run(manifest_summary=str(tmp_path / "manifest.json"), split=str(out),
                        manifest=str(tmp_path / "manifest.tsv"))
    with pytest.raises(ConfigError, match="split.method must be one of"):
        split_stage.run(manifest_summary=str(tmp_path / "manifest.json"), split=str(out),
                        method="shuffle")
