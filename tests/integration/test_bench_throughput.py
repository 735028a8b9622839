"""bench/gpu.sh's CPU mode: bench/throughput.py on a tiny random-weight Llama agrees across every path."""

from __future__ import annotations

import json

from conftest import load_script


def test_throughput_smoke_agrees_and_reports_ratios(tmp_path, embedded_dir):
    module = load_script("bench/throughput.py")
    out = tmp_path / "r.json"
    report = module.main(["--device", "cpu", "--shape", "tiny", "--dtype", "float32", "--docs", "4",
                          "--gen-prompts", "3", "--gen-tokens", "6", "--alphas=-1,0,1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    agree = report["agreement"]
    assert agree["max_abs_loglik_steered_vs_builtin"] <= 1e-5
    assert agree["max_abs_loglik_grid_sweep_vs_builtin"] <= 1e-5
    assert agree["identical_generations"] == agree["generation_points"] == 3
    assert set(report["ratios"]) == {"steered_over_hf", "builtin_over_hf", "grid_speedup_sweep_vs_builtin",
                                     "generation_speedup_batched_vs_separate"}
    assert report["model"] == "random tiny (float32)" and report["layer"] == 3
