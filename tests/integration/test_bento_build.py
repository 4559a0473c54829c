"""`bentoml build` of bentofile.yaml for real, into a store of its own (BENTOML_HOME): the Bento
holds the serving code and nothing else of the repository, pins the serving requirements, and
its code imports with only those packages present."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).with_name("bentoml")
VERSION = "test"


def _serving_requirements():
    spec = importlib.util.spec_from_file_location(
        "serving_requirements", ROOT / "docker" / "serving_requirements.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bento")
    # BentoML 1.4 looks uv up on every build and, when it is missing, pip-installs it into the
    # running environment (unpinned, from the network). A uv that fails on PATH stops that;
    # with lock_packages: false nothing runs it, so the build stays offline.
    fake_bin = tmp / "bin"
    fake_bin.mkdir()
    uv = fake_bin / "uv"
    uv.write_text("#!/bin/sh\necho 'uv must not run during bentoml build' >&2\nexit 1\n")
    uv.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECLOOP_", "BENTOML_"))}
    env.update(
        BENTOML_HOME=str(tmp / "bentoml"),
        PATH=f"{fake_bin}{os.pathsep}{env.get('PATH', '')}",
        RECLOOP_HOME=str(tmp / "var"),  # the service module reads the settings on import
    )
    result = subprocess.run(
        [str(BENTOML), "build", "-f", "bentofile.yaml", "--version", VERSION, "-o", "tag"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"recloop:{VERSION}" in result.stdout
    path = tmp / "bentoml" / "bentos" / "recloop" / VERSION
    assert (path / "bento.yaml").is_file()
    return path


def test_bento_holds_the_serving_code_and_nothing_else(bento):
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "serving.service:Recommender"
    assert {"name": "RECLOOP_PROFILE", "value": "production"} in [
        {k: env[k] for k in ("name", "value")} for env in manifest["envs"]
    ]
    src = bento / "src"
    script = _serving_requirements()
    project, _ = script.imported_modules()
    assert project and not [m for m in project if script.module_file(src, m) is None]
    tops = {path.name for path in src.iterdir()}
    assert tops <= {"serving", "recloop", "training", "feature_repo", "bentofile.yaml"}, tops
    files = [path.relative_to(src).as_posix() for path in src.rglob("*") if path.is_file()]
    assert not [f for f in files if "__pycache__" in f or "secrets" in f.split("/")]


def test_bento_installs_the_serving_requirements_without_locking_again(bento):
    python = bento / "env" / "python"
    assert not (python / "requirements.lock.txt").exists()  # lock_packages: false
    lines = [line.strip() for line in (python / "requirements.txt").read_text().splitlines()]
    pins = {line for line in lines if "==" in line}
    serving = (ROOT / "docker" / "serving-requirements.txt").read_text().splitlines()
    assert pins == {line for line in serving if "==" in line}  # BentoML's own line included
    assert not [pin for pin in pins if pin.startswith(("apache-airflow", "dbt-"))]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11.14-slim-bookworm" in dockerfile
    assert "USER bentoml" in dockerfile


# Run with `python -I -S`: no site-packages, no editable install of the repository; only the
# Bento's code and a folder that links the serving requirements' installed files.
IMPORT_CHECK = """if True:
    import importlib, json, sys, tempfile
    from pathlib import Path
    src, site, modules = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    sys.path[0:0] = [str(src), str(site)]
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            parent, _, attribute = name.rpartition(".")
            if error.name != name or not hasattr(sys.modules.get(parent), attribute):
                raise  # not `from module import attribute`
    from recloop.features.store import config
    from recloop.settings import Settings
    from feast.repo_config import RepoConfig
    home = Path(tempfile.mkdtemp())
    stores = RepoConfig(repo_path=home, **config(Settings(profile="production", home=home)))
    stores.online_store, stores.offline_store  # imports the production store classes
    importlib.import_module("feast.infra.registry.sql")
    project = ("recloop", "serving", "training", "feature_repo")
    print(json.dumps({
        "outside": sorted(
            name for name, module in sys.modules.items()
            if name.split(".")[0] in project and getattr(module, "__file__", None)
            and not Path(module.__file__).is_relative_to(src)
        ),
        "forbidden": sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("airflow", "dbt", "great_expectations", "cosmos")
        ),
        "count": len(sys.modules),
    }))
"""


def _link_installed_files(names: list[str], site: Path) -> None:
    """Symlink the installed files of ``names`` (and only those) into ``site``: a package
    directory whole, namespace packages (google, opentelemetry) file by file."""
    for name in names:
        dist = distribution(name)
        base = Path(dist.locate_file(""))
        for file in dist.files or []:
            if ".." in file.parts:
                continue  # scripts outside site-packages
            top = base / file.parts[0]
            whole = top.is_dir() and (
                (top / "__init__.py").is_file() or top.name.endswith(".dist-info")
            )
            source, target = (top, site / top.name) if whole else (base / file, site / file)
            if target.is_symlink() or not source.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)


def test_bento_code_imports_with_only_the_serving_requirements(bento, tmp_path):
    script = _serving_requirements()
    lines = script.OUTPUT.read_text().splitlines()
    names = [line.partition("==")[0] for line in lines if "==" in line]
    site = tmp_path / "site"
    _link_installed_files(names, site)
    project, imported = script.imported_modules(bento / "src")
    arguments = [str(bento / "src"), str(site), json.dumps(sorted(project | imported))]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_CHECK, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["outside"] == []  # every project module came from the Bento
    assert report["forbidden"] == []
