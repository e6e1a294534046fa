"""``python -m scg_models`` on a console that is not UTF-8 (Windows' cp1252).

Each command runs in a subprocess whose standard streams encode cp1252 with Python's default strict
errors, as on a Windows console: one character the console cannot show would crash it. Our own
messages must be plain ASCII; text from elsewhere (a file name) must be escaped, never fatal.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "scg_models" / "weights" / "scg_default.safetensors"


def run_cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m scg_models ARGS`` (or ``python -c CODE``) on a strict cp1252 console."""
    env = dict(os.environ, PYTHONIOENCODING="cp1252", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("PYTHONUTF8", None)
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "scg_models", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)


def assert_ascii_ok(proc: subprocess.CompletedProcess, rc: int = 0) -> tuple[str, str]:
    out, err = proc.stdout.decode("cp1252", "replace"), proc.stderr.decode("cp1252", "replace")
    assert "UnicodeEncodeError" not in err, err
    assert proc.returncode == rc, (proc.returncode, out, err)
    for name, data in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        bad = sorted({chr(b) for b in data if b > 127})
        assert not bad, f"{name} has non-ASCII bytes {bad}: {data.decode('cp1252', 'replace')!r}"
    return out, err


HELP_OF_EVERY_COMMAND = """
from scg_models.__main__ import main
for command in ([], ["convert"], ["extract"], ["bench"]):
    try:
        main([*command, "--help"])
    except SystemExit as stop:
        assert stop.code == 0, (command, stop.code)
    print("=" * 20)
"""


def test_help_is_ascii():
    """The help of the program and of each command (in one interpreter: torch is imported once)."""
    out, _ = assert_ascii_ok(run_cli(code=HELP_OF_EVERY_COMMAND))
    helps = [h.strip() for h in out.split("=" * 20)[:-1]]
    assert len(helps) == 4 and helps[0].startswith("usage: python -m scg_models [-h]")
    for command, text in zip(("convert", "extract", "bench"), helps[1:]):
        assert text.startswith(f"usage: python -m scg_models {command} [-h]")


def _png(path: Path, size: int, seed: int) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped autoencoder is missing from scg_models/weights")
def test_extract_with_grid(tmp_path):
    a, b = _png(tmp_path / "a.png", 48, 0), _png(tmp_path / "b.png", 40, 1)
    out_dir = tmp_path / "out"
    out, _ = assert_ascii_ok(run_cli("extract", str(a), str(b), "--groups", "HC0,HC3", "--grid", "-o", str(out_dir)))
    assert "wrote 6 PNGs (2 images x 2 groups + a sheet of all groups each)" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_HC0.png", "a_HC3.png", "a_groups.png",
                                                        "b_HC0.png", "b_HC3.png", "b_groups.png"]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped autoencoder is missing from scg_models/weights")
def test_unshowable_file_name_is_escaped_not_fatal(tmp_path):
    good = _png(tmp_path / "good.png", 40, 0)
    broken = tmp_path / "sketch_\u2192_\u2265.png"  # not in cp1252
    broken.write_bytes(b"not an image")
    out, err = assert_ascii_ok(run_cli("extract", str(good), str(broken), "--groups", "HC0", "-o",
                                       str(tmp_path / "out")))
    assert "skipped" in err and "\\u2192" in err
    assert "wrote 1 PNGs" in out


def test_error_message_is_ascii(tmp_path):
    _, err = assert_ascii_ok(run_cli("extract", "x.png", "--model", str(tmp_path / "missing.safetensors"), "-o",
                                     str(tmp_path)), rc=2)
    assert err.startswith("error: --model:")


def test_bench_tiny(tmp_path):
    out, _ = assert_ascii_ok(run_cli("bench", "--size", "48", "--repeats", "3", "--threads", "1"))
    lines = out.splitlines()
    assert "1 torch threads for both paths, 3 interleaved repeats" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["HC0", "HC3", "all"]


def test_bench_rejects_zero_repeats():
    _, err = assert_ascii_ok(run_cli("bench", "--repeats", "0"), rc=2)
    assert "expected a whole number >= 1, got '0'" in err


def test_bench_rows_in_process():
    """The table's numbers: both paths at the thread count asked for, the ratio inside its quartiles."""
    import torch

    from scg_models import bench

    before = torch.get_num_threads()
    lines: list[str] = []
    try:
        rows = bench.run(size=40, repeats=4, threads=1, selections=("HC3",), out=lines.append)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    (row,) = rows
    assert row["selection"] == "HC3" and row["modules"] == 1 and row["threads"] == 1
    assert 0 < row["speedup_q1"] <= row["speedup"] <= row["speedup_q3"]
    assert row["max_rel_diff"] < 1e-5  # the fast path computes the authors' hint
    assert all(line.isascii() for line in lines) and len(lines) == 3
