"""Label efficiency in the frozen evaluation: class-balanced low-shot subsets, several seeds, mean and spread."""
import numpy as np
import pytest

from vjepa_fast import eval as ev
from vjepa_fast.data.probe_splits import SyntheticSplit, low_shot_indices
from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.data.synthetic import SyntheticVideos

TINY = ["data.num_frames=4", "data.crop_size=32", "data.num_workers=0"]


@pytest.mark.parametrize("per_class", [1, 3, 7])
def test_labels_per_class_gives_exact_counts_and_seeds_differ(per_class):
    rng = np.random.default_rng(per_class)
    labels = rng.integers(0, 5, 200)
    labels[:3] = 5  # a class with only 3 clips: all of them, never more
    subsets = [low_shot_indices(labels, seed, per_class=per_class) for seed in range(4)]
    for sub in subsets:
        assert len(np.unique(sub)) == len(sub) and np.all(np.diff(sub) > 0)
        counts = np.bincount(labels[sub], minlength=6)
        assert counts[:5].tolist() == [per_class] * 5 and counts[5] == min(3, per_class)
    assert len({tuple(s) for s in subsets}) == 4  # every seed its own subset
    assert np.array_equal(low_shot_indices(labels, 2, per_class=per_class), subsets[2])  # and reproducible


def test_label_fraction_takes_that_share_of_every_class():
    labels = np.repeat(np.arange(3), [10, 40, 1])
    sub = low_shot_indices(labels, 0, fraction=0.25)
    assert np.bincount(labels[sub]).tolist() == [2, 10, 1]  # round(2.5) = 2, 10, at least one


def test_synthetic_split_labels_match_the_clips():
    videos = SyntheticVideos(num_frames=2, size=16, length=None, seed=3)
    split = SyntheticSplit(videos, np.arange(5, 25), "motion")
    assert split.labels().tolist() == [videos[i]["motion"] for i in range(5, 25)]
    small = split.restricted(np.array([0, 4]))
    assert [small[i][1] for i in range(2)] == [videos[5]["motion"], videos[9]["motion"]]


def test_evaluate_low_shot_over_seeds():
    cfg = load_config(None, TINY)
    e = ev.EvalConfig(label="motion", epochs=1, train_samples=60, val_samples=16, labels_per_class=2, seeds=3,
                      batch_size=8, device="cpu")
    res = ev.evaluate(cfg, e)
    assert res["train_samples_per_seed"] == [18, 18, 18] and res["seeds"] == [0, 1, 2]
    assert len(res["accuracies"]) == 3 and abs(res["accuracy"] - np.mean(res["accuracies"])) < 1e-12
    assert res["accuracy_std"] == pytest.approx(np.std(res["accuracies"], ddof=1))


@pytest.mark.parametrize("args, match", [(["--labels-per-class", "0"], "--labels-per-class"),
                                         (["--label-fraction", "1.5"], "--label-fraction"),
                                         (["--seeds", "0"], "--seeds"),
                                         (["--labels-per-class", "2", "--label-fraction", "0.5"], "not both")])
def test_bad_low_shot_options(args, match):
    _, _, e = ev.parse_args(args)
    with pytest.raises(ConfigError, match=match):
        ev.validate_eval(e)
