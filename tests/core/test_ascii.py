"""Every message a console may show is ASCII: the project's code files hold no other characters
(a Windows cp1252 console cannot print x-signs, arrows or minus signs; see also test_cli_console)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("scg_models", "nodes", "train", "bench", "scripts", "tests", ".ci")


def code_files() -> list[Path]:
    files = [ROOT / "__init__.py"]
    for folder in CODE_DIRS:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh", ".js") or p.name == "run"]
    return sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts)


def test_code_is_ascii():
    files = code_files()
    assert len(files) > 50 and ROOT / "scg_models" / "autoencoder.py" in files
    offending = {}
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.isascii():
                offending.setdefault(str(path.relative_to(ROOT)), []).append(n)
    assert not offending, f"non-ASCII characters in {offending}"
