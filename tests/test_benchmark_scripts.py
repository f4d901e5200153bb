"""The benchmark scripts run end to end on tiny sizes and print the JSON figures they promise."""

import json

from click.testing import CliRunner

from uda_reid.cli import cli


def test_throughput_benchmark_reports_both_precisions_against_bare_passes():
    result = CliRunner().invoke(cli, ["bench", "throughput", "--sizes", "synthetic", "--precisions", "fp32,bf16",
                                      "--steps", "1", "--extract-images", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    synthetic = report["sizes"]["synthetic"]
    assert set(synthetic) == {"fp32", "bf16"}
    for figures in synthetic.values():
        assert figures["step"]["arch"] == "resnet18" and figures["step"]["images_per_step"] == 64
        assert figures["step"]["step_images_per_s"] > 0 and figures["step"]["step_vs_bare"] > 0
        assert figures["extraction"]["images"] == 8 and figures["extraction"]["extract_vs_bare"] > 0
    assert synthetic["bf16"]["step_speedup_vs_fp32"] > 0
    assert "step_speedup_vs_fp32" not in synthetic["fp32"]


def test_throughput_benchmark_names_an_unknown_size():
    result = CliRunner().invoke(cli, ["bench", "throughput", "--sizes", "huge"])
    assert result.exit_code != 0 and "unknown size(s) huge; known: paper, synthetic" in result.output


def test_evaluation_benchmark_with_re_ranking_gives_identical_figures_both_ways():
    result = CliRunner().invoke(cli, ["bench", "evaluation", "--rerank", "--queries", "40", "--gallery", "300", "--dim", "16",
                                      "--compare-queries", "30", "--compare-gallery", "200", "--ids", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rerank"] is True
    assert report["comparison"]["chunked"]["mode"] == "rerank_chunked"
    assert report["comparison"]["identical_figures"] is True
    assert report["full_size"]["queries"] == 40 and report["full_size"]["peak_rss_gib"] > 0


def test_bench_lists_every_benchmark_script():
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert all(name in result.output for name in ("clustering", "evaluation", "synthetic", "throughput", "pretraining"))
