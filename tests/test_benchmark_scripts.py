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
        extraction = figures["extraction"]
        assert extraction["loader_only_images_per_s"] > 0 and extraction["loader_vs_bare"] > 0
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


def test_recipe_cost_counts_the_recipes_images_and_scales_the_reference_time(monkeypatch):
    import recipe_cost

    figures = {"train_flops": 20e9, "eval_flops": 8e9, "activation_bytes": 2**20, "parameters": 10_000_000}
    monkeypatch.setattr(recipe_cost, "per_image", lambda config: figures)
    reference = {"train_flops": 10e9, "eval_flops": 4e9}
    report = recipe_cost.cost("cluster_contrast_vit_usl_market1501", reference, step_rate=1000.0,
                              extraction_rate=2000.0, forward_rate=2000.0)
    trained = 50 * 200 * 256  # epochs x iterations x batch
    extracted = 50 * 12936 + (1 + 50 // 10) * (3368 + 15913)  # every clustering, every evaluation and the first
    assert report["images"] == {"trained": {"adaptation": trained}, "extracted_or_evaluated": extracted}
    # twice the reference's FLOPs: half its step rate, and extraction at the model's rate (1,000/s), the
    # slower than the loader's 2,000/s
    expected_hours = (trained / 500.0 + extracted / 1000.0) / 3600
    assert report["estimated_hours_one_gpu"] == round(expected_hours, 1)
    assert report["memory_GiB"]["activations_batch_256"] == 0.2  # 1 MiB an image
    # SGD: weights, gradients and momentum
    assert report["memory_GiB"]["weights_grads_optimiser"] == round(10e6 * 4 * 3 / 2**30, 2)
