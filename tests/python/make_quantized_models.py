"""Makes the default model in every weight type the engine reads, with
llama.cpp's own quantizer (llama-cpp-python), so each type is tested on real
weights against llama.cpp.

usage: make_quantized_models.py OUT_DIR [--model PATH]

Existing outputs are kept (the script is idempotent). Tensors whose row
length is not a multiple of a K type's 256-element super-block fall back to
llama.cpp's choice of another type, as in any real K-quant file.
"""
import argparse
import ctypes
import sys
import time
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp's file types (llama.h: enum llama_ftype).
FTYPES = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q6_K": 18,
    "Q4_K": 15,  # Q4_K_M
    "BF16": 32,
}


@llama_cpp.llama_log_callback
def _quiet_log(level, text, user_data):
    """llama.cpp logs every tensor it converts; the progress lines below suffice."""


def quantize(src: Path, dst: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True  # the source is itself quantized (Q4_1)
    params.pure = True              # every tensor in the one type, where its shape allows
    params.nthread = 2
    tmp = dst.with_suffix(".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({dst.name}) failed with {rc}")
    tmp.rename(dst)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = parser.parse_args()
    if not args.model.exists():
        print(f"error: {args.model} is missing: run scripts/setup.sh", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p())
    llama_cpp.llama_backend_init()
    stem = args.model.name.split(".")[0]
    for i, (name, ftype) in enumerate(FTYPES.items(), 1):
        dst = args.out_dir / f"{stem}.{name}.gguf"
        if dst.exists():
            print(f"[{i}/{len(FTYPES)}] {dst.name}: present", flush=True)
            continue
        start = time.monotonic()
        quantize(args.model, dst, ftype)
        print(f"[{i}/{len(FTYPES)}] {dst.name}: {dst.stat().st_size / 1e6:.0f} MB in {time.monotonic() - start:.1f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
