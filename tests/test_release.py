"""Release hygiene (issue 24): the license, the citation, the changelog, one version source, and the wheel check
in `make test`. Each test reads the files a user or a packager reads."""
import re
from importlib import metadata
from pathlib import Path

import yaml

import dgn_plugins

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_apache_2_with_this_projects_copyright():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("Copyright ") and "dgn-plugins authors" in text.splitlines()[0]
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert 'license="Apache-2.0"' in (ROOT / "setup.py").read_text()


def test_citation_names_the_software_and_both_methods():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["version"] == dgn_plugins.__version__
    assert citation["license"] == "Apache-2.0"
    titles = {reference["title"] for reference in citation["references"]}
    assert "Dynamic Group Normalization: Spatio-Temporal Adaptation to Evolving Data Statistics" in titles
    assert "Group Normalization" in titles
    readme = (ROOT / "README.md").read_text()
    citing = readme[readme.index("## Citing"):]
    assert "Smadar" in citing and "Hoogi" in citing and "Wu" in citing and "@inproceedings" in citing


def test_one_version_source():
    version = {}
    exec((ROOT / "dgn_plugins" / "_version.py").read_text(), version)
    assert dgn_plugins.__version__ == version["__version__"]
    assert metadata.version("dgn-plugins") == version["__version__"]  # the installed metadata, built by setup.py
    setup_py = (ROOT / "setup.py").read_text()
    assert "version=read_version()" in setup_py
    assert not re.search(r"__version__\s*=", (ROOT / "dgn_plugins" / "__init__.py").read_text())


def test_changelog_has_unreleased_and_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.M)
    assert headings[0] == "Unreleased"
    assert dgn_plugins.__version__ in headings


def test_metadata_matches_what_ci_tests():
    requires = metadata.requires("dgn-plugins")
    torch_requirement = next(r for r in requires if r.startswith("torch"))
    assert torch_requirement.replace(" ", "") in ("torch<2.15,>=2.1", "torch>=2.1,<2.15")
    stacks = sorted(p.name for p in (ROOT / "requirements").glob("stack-*.txt"))
    assert stacks == ["stack-torch2.1.txt", "stack-torch2.13.txt"]
    pins = {p: (ROOT / "requirements" / p).read_text() for p in stacks}
    assert "torch==2.1.2" in pins["stack-torch2.1.txt"] and "torch==2.13.0" in pins["stack-torch2.13.txt"]
    readme = (ROOT / "README.md").read_text()
    stacks_table = readme[readme.index("### Tested stacks"):]
    assert "2.1.2" in stacks_table and "2.13.0" in stacks_table


def test_make_test_runs_both_stacks_and_the_wheel_check():
    """What `make test` would run (make -n: nothing runs): on each stack, labelled, the suite then the wheel check."""
    import subprocess

    done = subprocess.run(["make", "-n", "--no-print-directory", "test"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for stack in ("torch2.13", "torch2.1"):
        lines = [line for line in done.stdout.splitlines() if line.startswith(f"[{stack}] ")]
        suite = next((i for i, line in enumerate(lines) if "-m pytest" in line), None)
        wheel = next((i for i, line in enumerate(lines) if "check_wheel.py" in line), None)
        assert suite is not None, f"make test runs no suite on {stack}"
        assert wheel is not None, f"make test runs no wheel check on {stack}"
        assert suite < wheel, stack
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def _check_wheel_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_wheel", ROOT / ".ci" / "check_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_check_names_what_a_wheel_lacks(tmp_path):
    import zipfile

    check_wheel = _check_wheel_module()
    complete = ["dgn_plugins/_C.cpython-311-x86_64-linux-gnu.so", "dgn_plugins/_kmeans.cpython-311-x86_64-linux-gnu.so",
                "dgn_plugins/.mim/configs/mmdet/a.py", "dgn_plugins/.mim/configs/mmseg/b.py",
                "dgn_plugins/.mim/configs/detectron2/c.yaml", "dgn_plugins/.mim/tools/train.py",
                "dgn_plugins/cli.py", "dgn_plugins/launch.py", "dgn_plugins-0.1.0.dist-info/LICENSE"]
    for dropped in [None, *complete]:
        wheel = tmp_path / "dgn_plugins-0.1.0-cp311-cp311-linux_x86_64.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for name in complete:
                if name != dropped:
                    archive.writestr(name, "")
        missing = check_wheel.check_contents(wheel)
        assert (missing == []) == (dropped is None), (dropped, missing)
