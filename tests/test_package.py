"""Both `pip install .` and `pip install -e .` give working imports of the three side folders.

Each install goes into a throwaway virtual environment that sees the test environment's packages
through a .pth file (no downloads), and is imported from outside the repository.
"""
import os
import site
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMPORTS = ("import desam_nnu, desam_nnu.planners, desam_nnu.trainers, desam_nnu.inference, desam_nnu.cli; "
           "from desam_nnu.planners import DeSAMPlanner, DeSAMPreprocessor; "
           "import desam_nnu.cli.plan_and_preprocess; "
           "print(desam_nnu.planners.__file__)")


def _venv_with_our_site_packages(folder: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    target = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     text=True).strip()
    ours = [p for p in site.getsitepackages() if os.path.isdir(p)]
    Path(target, "_parent_env.pth").write_text("\n".join(ours) + "\n")
    return python


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_gives_working_imports(tmp_path, editable):
    python = _venv_with_our_site_packages(tmp_path / "env")
    args = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    args += ["-e", str(REPO)] if editable else [str(REPO)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = subprocess.run([str(python), "-c", IMPORTS], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    where = Path(out.stdout.strip().splitlines()[-1])
    if editable:
        assert where == REPO / "planners" / "__init__.py"
    else:
        assert "site-packages" in where.parts and where.parent.name == "planners" \
               and where.parent.parent.name == "desam_nnu"
    script = tmp_path / "env" / "bin" / "desam_plan_and_preprocess"
    assert script.is_file()
    assert subprocess.run([str(script), "--help"], capture_output=True, timeout=300).returncode == 0
