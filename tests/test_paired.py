"""Benchmark tables of variants on the same images: intervals, McNemar p-values against the first row, seeds pooled."""
import pytest

from robust_sabn.cli import main
from robust_sabn.cli.bench.paired import Bench, Variant, bench_table, seeds_table
from robust_sabn.errors import ConfigError
from robust_sabn.stats import mcnemar_exact, wilson_interval

METRICS = {"clean": "clean", "aa": "AA"}


def bench(seed: int, base: str, other: str) -> Bench:
    return Bench(f"seed {seed}", dict(METRICS), {"base": Variant({"clean": "1" * 10, "aa": base}, 10.0),
                                                 "other": Variant({"clean": "1" * 10, "aa": other}, 15.0)})


def test_a_bench_table_gives_intervals_and_the_mcnemar_p_of_each_difference():
    # 10 images: base right on the first 4, other on the first 7 -> other alone right on 3, base alone on none
    table = bench_table(bench(0, "1111000000", "1111111000"))
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| base") or line.startswith("| other")]
    low, high = wilson_interval(4, 10)
    assert rows[0][2] == f"40.0 ({100 * low:.1f}-{100 * high:.1f})"
    assert rows[1][2].endswith(f"; +30.0, p {mcnemar_exact(3, 0):.3f}")  # 0.250: three disagreements prove little
    assert rows[1][1].endswith("; +0.0, p 1.000") and rows[1][-1] == "1.50 |"


def test_seeds_pool_images_for_mcnemar_and_count_seeds_for_the_sign_test(tmp_path):
    benches = [bench(0, "1111000000", "1111111000"), bench(1, "1111100000", "1111111100"),
               bench(2, "1111111111", "1111111110")]
    rows = {tuple(line.split(" | ")[:2]): line.split(" | ") for line in seeds_table(benches).splitlines()[2:]}
    other = rows[("| other", "AA")]
    assert other[3] == "70.0, 80.0, 90.0"
    low, high = wilson_interval(24, 30)  # 7 + 8 + 9 of 30 pooled images
    assert other[2] == f"80.0 ({100 * low:.1f}-{100 * high:.1f})"
    assert other[4] == f"{100 * (24 - 19) / 30:+.1f}"
    assert other[5] == f"{mcnemar_exact(6, 1):.3f}"  # discordant pairs summed over seeds: 3 + 3 and 0 + 1
    assert other[6] == "2 / 1" and other[7].removesuffix(" |") == f"{mcnemar_exact(2, 1):.3f}"
    for seed, b in enumerate(benches):
        b.save(tmp_path / f"s{seed}")
    assert Bench.load(tmp_path / "s1") == benches[1]
    with pytest.raises(ConfigError, match="same variants"):
        seeds_table([benches[0], Bench("x", dict(METRICS), {"other": benches[0].variants["other"]})])


def test_bench_train_pool_prints_each_seed_and_the_pooled_table(tmp_path, capsys):
    for seed in range(2):
        bench(seed, "1111000000", "1111111000").save(tmp_path / f"s{seed}")
    assert main(["bench", "train", "--pool", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    out = capsys.readouterr().out
    assert "seed 0" in out and "seed 1" in out and "mean of 2 seeds" in out
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bench-train.json").write_text('{"format": "robust-sabn-bench-train/1", "rows": []}')
    for folder in ("missing", "other"):
        assert main(["bench", "train", "--pool", str(tmp_path / folder)]) == 2
        assert "score that bench again" in capsys.readouterr().err
