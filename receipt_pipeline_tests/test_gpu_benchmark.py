"""The GPU benchmark's logic on the CPU: batch search, GPU names, kernel kinds, its stages and its report.

The numbers themselves come from a GPU (BENCHMARKS.md); here a tiny LayoutLM runs every stage but torch.compile.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu


def test_auto_batch_size_finds_the_largest_batch_that_fits_by_doubling_then_bisecting():
    for capacity in (8, 9, 100, 392, 704, 1000):
        tried = []

        def fits(batch_size: int, capacity=capacity, tried=tried) -> bool:
            tried.append(batch_size)
            return batch_size <= capacity

        found = gpu.auto_batch_size(fits)
        assert found <= capacity < found + 8, (capacity, found)
        assert len(tried) <= 20 and tried[:2] == [8, 16]
    assert gpu.auto_batch_size(lambda batch_size: False) == 0
    assert gpu.auto_batch_size(lambda batch_size: True, limit=64) == 64


def test_peak_rates_are_matched_by_whole_words_of_the_gpu_name():
    assert gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA A10G") == 125.0
    assert gpu.peak_tflops("NVIDIA L4") == 121.0
    assert gpu.peak_tflops("NVIDIA L40S") is None  # not an L4


def test_kernels_are_summed_by_kind_from_the_names_the_profiler_reports():
    # names as torch.profiler reported them on the H200 (BENCHMARKS.md)
    summary = gpu.summarise_kernels(
        {
            "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3": 16.0,
            "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7": 10.0,
            "nvjet_sm90_tst_192x192_64x3_1x2_h_bz_coopB_splitK_NTN": 14.0,
            "triton_per_fused__to_copy_add_native_dropout_native_layer_norm_3": 9.0,
            "triton_poi_fused_gelu_gelu_backward_5": 2.0,
            "void at::native::(anonymous namespace)::fused_adamw_kernel": 0.9,
            "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": 0.5,
        },
        top=3,
    )
    assert summary["kinds_ms"] == {
        "attention": 26.0,
        "matmul": 14.0,
        "normalisation": 9.0,
        "fused (triton)": 2.0,
        "optimizer": 0.9,
        "elementwise": 0.5,
    }
    assert summary["gpu_ms_per_step"] == pytest.approx(52.4)
    names = [name for name, _ in summary["top_kernels_ms"]]
    assert len(names) == 3 and names[0].startswith("cudnn_generated")


def test_without_a_gpu_every_row_is_marked_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path), "--batch-sizes", "8", "16"]) == 0
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert report["gpu"] is None and len(report["rows"]) == 2 * 2 * 2
    assert all(row["status"] == "not measured: no CUDA device" for row in report["rows"])
    assert report["flops_per_token"] == pytest.approx(567e6, rel=0.01)  # layoutlm-base at 512 tokens
    text = (tmp_path / "gpu_benchmark.md").read_text()
    assert "not measured: no CUDA device" in text and "| p5 | H100 |" in text


@pytest.fixture
def tiny_model(monkeypatch):
    from transformers import LayoutLMConfig

    monkeypatch.setattr(gpu, "SEQUENCE_LENGTH", 32)
    config = dict(num_labels=13, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    monkeypatch.setattr(gpu, "model_config", lambda: LayoutLMConfig(**config))


def test_dropout_can_be_switched_off_for_the_attention_alone_or_everywhere(tiny_model):
    import torch

    for setting, attention, hidden in (("model", 0.1, 0.1), ("no attention dropout", 0.0, 0.1), ("none", 0.0, 0.0)):
        model, used = gpu.build_model("sdpa", torch.device("cpu"))
        gpu.remove_dropout(model, setting)
        assert used == "sdpa"
        assert {m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")} == {attention}
        assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {hidden}


def test_every_stage_but_compile_runs_and_reports_on_a_tiny_model(tiny_model, tmp_path):
    import torch

    args = gpu.parse_args(
        ["--out", str(tmp_path), "--batch-sizes", "2", "4", "--steps", "5", "--warmup", "1",
         "--optimisation-batch-sizes", "4", "--attention-batch-size", "2", "--auto-batch-limit", "16", "--no-compile"]
    )  # fmt: skip
    report = gpu.environment()
    report.update(steps=args.steps, warmup=args.warmup, rows=[], recommended_setting=None, recommendations=[])
    report.update(parameters=gpu.count_parameters(), gpu="NVIDIA H200", gpu_memory_gib=139.8, peak_tflops=989.0)
    report["flops_per_token"] = gpu.training_flops_per_token(report["parameters"]["non_embedding"])
    gpu.run_benchmark(args, report, torch.device("cpu"))

    stages = [row["stage"] for row in report["rows"]]
    assert stages.count("optimisation") == 6 and stages.count("sweep") == 2 * 2 * 2
    assert all(row["status"] == "ok" and row["tokens_per_second"] > 0 for row in report["rows"])
    # the chosen setting is the fastest optimisation row's
    fastest = max((r for r in report["rows"] if r["stage"] == "optimisation"), key=lambda r: r["tokens_per_second"])
    assert report["recommended_setting"] == gpu.StepConfig(**{
        name: fastest[name] for name in ("batch_size", "attention", "kernels", "fused_adamw")
    }).setting()  # fmt: skip
    assert report["auto_batch_size"]["batch_size"] == 16  # nothing runs out of memory on the CPU: the limit
    math = next(row for row in report["attention_kernels"] if row["kernel"] == "math" and row["masked"])
    assert math["status"] == "ok" and math["milliseconds"] > 0
    text = gpu.markdown(report)
    for heading in ("Attention kernels alone", "Optimisations", "Sweep", "auto_batch_size", "Recommended batch"):
        assert heading in text, heading
