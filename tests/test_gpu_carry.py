"""benchmarks/gpu_carry.py: the init model travels to a GPU machine as float16 and is widened back there; the id it is
recorded under must be the one the loader computes from the rounded weights, or the loader refuses the file."""
import subprocess
import sys

from conftest import load_benchmark


def test_float16_transfer_of_an_init_model_loads_under_the_predicted_id(tiny_checkpoint, tmp_path):
    from stemjepa.models.export import export_model
    from stemjepa.models.registry import load_model

    g = load_benchmark("gpu_carry")
    export = tmp_path / "init.safetensors"
    export_model(load_model(str(tiny_checkpoint), device="cpu"), export)
    predicted = g.half_init(str(export), tmp_path)
    half = tmp_path / "init-fp16.safetensors"
    assert half.stat().st_size < 0.6 * export.stat().st_size
    (tmp_path / "widen.py").write_text(g.WIDEN)
    widened = tmp_path / "widened.safetensors"
    subprocess.run([sys.executable, str(tmp_path / "widen.py"), str(half), str(widened), predicted], check=True)
    assert load_model(str(widened), device="cpu").model_id == predicted != load_model(str(export)).model_id
