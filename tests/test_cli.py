"""The ``rtcalm`` command line without the full install: every command that needs torch, numba, scipy ...
says in one line what to install (never a traceback), and the client commands still work.

The missing modules are simulated in a child interpreter by a ``sys.meta_path`` finder that refuses them,
as a base (client-only) install would; CI also runs the CLI in a real client-only virtual environment."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rtcalm.cli import main

HEAVY = ("torch", "numba", "scipy", "onnxruntime", "onnx", "h5py", "kneed", "prometheus_client", "safetensors",
         "sklearn", "tqdm", "llvmlite")


def run_without_heavy_modules(*argv: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import sys

        class RefuseHeavy:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, RefuseHeavy())
        from rtcalm.cli import main
        sys.exit(main({list(argv)!r}))
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [
    ["serve"],
    ["demo", "--duration", "1"],
    ["info", "--synthetic"],
    ["stats", "--synthetic"],
    ["replay", "--synthetic"],
    ["decode-eval", "x.nwb", "--task", "direction"],  # its module itself cannot be imported without them
    ["forecast-eval", "x.npz", "--horizons", "1,5"],
    ["fit-head", "x.h5", "--task", "direction", "--out", "heads"],
    ["decode", "x.h5", "--head", "heads"],
    ["bench", "latency"],
    ["compile", "--backend", "onnx"],
])
def test_heavy_commands_name_the_install_in_one_line(argv):
    result = run_without_heavy_modules(*argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rtcalm: error: rtcalm {argv[0]} needs ")
    assert 'pip install torch==2.13.0 "rtcalm[full]"' in lines[0]


def test_help_and_the_client_commands_work_without_them(tmp_path):
    result = run_without_heavy_modules("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "demo", "listen", "decode-eval", "keys"):
        assert command in result.stdout
    result = run_without_heavy_modules("listen", "--help")
    assert result.returncode == 0 and "--count" in result.stdout, result.stderr
    result = run_without_heavy_modules("keys", "generate", str(tmp_path / "keys"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "keys" / "server.key").is_file()
    # rtcalm heads is a client command: a daemon that does not answer is a one-line failure
    result = run_without_heavy_modules("heads", "list", "--session", "rig", "--control", "tcp://127.0.0.1:1",
                                       "--timeout", "0.3")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "no reply to 'status'" in result.stderr
    # Nothing to listen to within the timeout: a one-line failure, still no traceback.
    result = run_without_heavy_modules("listen", "--from", "tcp://127.0.0.1:1", "--timeout", "0.3", "--count", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no message from tcp://127.0.0.1:1 within 0.3 s" in result.stderr


def test_a_missing_module_that_is_not_a_dependency_keeps_its_traceback(monkeypatch):
    """Only known dependencies get the install hint; any other missing module is a bug and must show."""
    from rtcalm.commands import info

    def broken(_args):
        import rtcalm_module_that_does_not_exist  # noqa: F401

    monkeypatch.setattr(info, "run", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["info", "--synthetic"])


def test_help_texts_show_literal_percent_signs(capsys):
    with pytest.raises(SystemExit):
        main(["forecast-eval", "--help"])
    out = capsys.readouterr().out
    assert "30%" in out and "%%" not in out
