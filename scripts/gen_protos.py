"""Regenerate Python stubs (and .pyi type stubs) from proto/ into generated/.

With --check, generate into a temporary folder and fail if anything differs
from what is committed, so CI catches stubs that drifted from the protos.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "generated"
PACKAGE_DIRS = ("repwise", "repwise/v1")


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside python
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for package in PACKAGE_DIRS:
        (out / package / "__init__.py").touch()
    (out / "repwise" / "py.typed").touch()


def tree(folder: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(folder)): p
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated/ is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp)
        generate(fresh_dir)
        fresh, committed = tree(fresh_dir), tree(OUT_DIR) if OUT_DIR.exists() else {}
        stale = sorted(
            name
            for name in fresh.keys() | committed.keys()
            if name not in fresh
            or name not in committed
            or not filecmp.cmp(fresh[name], committed[name], shallow=False)
        )
        if check:
            if stale:
                sys.exit("generated/ is out of date; run `make proto`: " + ", ".join(stale))
            print("generated/ matches proto/")
            return
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(fresh_dir, OUT_DIR)
        print(f"regenerated {len(fresh)} files in generated/")


if __name__ == "__main__":
    main()
