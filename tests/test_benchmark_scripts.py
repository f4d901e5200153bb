"""The benchmark scripts run end to end on tiny sizes and print the JSON figures they promise."""

import json
from pathlib import Path

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
        assert extraction["loader_float32_images_per_s"] > 0
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


def test_the_gpu_check_writes_at_most_eight_files_and_judges_the_targets(tmp_path, monkeypatch):
    """The check's plumbing on a CPU, its stages replaced by canned outputs: the files it promises, within
    the device tool's eight, each target judged against the figures (or None when not measured)."""
    import gpu_check

    throughput = {"sizes": {"paper": {"bf16": {"step": {"step_images_per_s": 5200.0, "step_vs_bare": 0.8}, "step_speedup_vs_fp32": 1.5,
                                               "extraction": {"extract_images_per_s": 8000.0, "extract_vs_bare": 0.93}}}}}
    canned = {"training_throughput.py": json.dumps(throughput),
              "clustering_stage.py": "N=... figures\n" + json.dumps({"seconds": {"knn_plus_jaccard": 12.5},
                                                                     "labels_equal_sklearn": True})}

    def fake_run(command, timeout_s, cwd=None, env=None):
        assert timeout_s >= 1
        if "pytest" in command:
            return {"status": 0, "seconds": 1.0, "stdout": "1 passed", "stderr": ""}
        if "adapt" in command:
            run = Path(command[command.index("--out") + 1])
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"last": {"mAP": 30.0}}))
            return {"status": 0, "seconds": 55.0, "stdout": "", "stderr": ""}
        script = next(name for name in canned if any(part.endswith(name) for part in command))
        return {"status": 0, "seconds": 2.0, "stdout": canned[script], "stderr": ""}

    monkeypatch.setattr(gpu_check, "_run", fake_run)
    out = tmp_path / "check"
    result = CliRunner().invoke(gpu_check.main, [str(out), "--budget-s", "530"])
    assert result.exit_code == 0, result.output
    written = {path.name for path in out.iterdir()}
    assert written <= gpu_check.OUTPUT_FILES and len(gpu_check.OUTPUT_FILES) <= 8
    assert {"main_job.json", "throughput.json", "summary.json", "tests.log"} <= written
    verdicts = {v["figure"]: v["met"] for v in json.loads((out / "summary.json").read_text())["targets"]}
    assert verdicts["throughput.json:sizes.paper.bf16.step.step_images_per_s"] is True
    assert verdicts["throughput.json:sizes.paper.bf16.step_speedup_vs_fp32"] is False
    assert verdicts["throughput.json:sizes.paper.bf16.step.step_vs_bare"] is False  # 20 % outside the network
    assert verdicts["clustering_1000000x256.json:seconds.knn_plus_jaccard"] is False
    assert verdicts["clustering_1000000x256.json:labels_equal_sklearn"] is True
    assert verdicts["main_job.json:seconds"] is True
    assert verdicts["clustering_32621x2048.json:float32_product.differing_list_entries"] is None  # not measured


def test_the_gpu_check_plan_fits_its_budget_and_gives_the_tests_at_most_five_minutes():
    import gpu_check

    for budget in (60, 530, 2000):
        plan = gpu_check.stage_plan(budget, with_tests=True)
        assert sum(plan.values()) <= budget and plan["tests"] <= 300


def test_the_gpu_check_refuses_a_folder_with_other_files(tmp_path):
    import gpu_check

    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(gpu_check.main, [str(tmp_path)])
    assert result.exit_code != 0 and "holds other files" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
