"""`cmglab up` and the test harness as a newcomer meets them (issue 21): a service that dies under a
foreground lab is reported at once and restarted (no zombie), Ctrl-C stops the lab within 2 s, and a lab
that fails to start one service stops the ones it had started (`cmglab up` and `LabProcesses.ensure`)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import handover
from cmglab.tools import orchestrate
from cmglab.tools.processes import SERVICES, LabProcesses, ServiceFailed, isolated_lab


def lab_processes(lab: Lab) -> list[int]:
    """Live (not zombie) processes whose command line names this lab."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if str(lab.dir) in cmdline and "Z" not in state.split()[1]:
            found.append(int(entry.name))
    return found


def is_zombie(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" in status


def break_cmg(lab: Lab) -> None:
    """The CMG cannot load its TLS key: it exits at start, the other services start normally."""
    (lab.dir / "pki" / "cmg" / "cmg.key").write_text("not a key\n")


def start_up(lab: Lab, *args: str, columns: int = 80) -> subprocess.Popen[str]:
    with handover("127.0.0.1") as (env, fds):  # the ports this test reserved, passed on to the services
        return subprocess.Popen(
            [sys.executable, "-m", "cmglab", "up", "--lab", str(lab.dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": str(columns), **env},
            pass_fds=fds,
        )


def read_until(proc: subprocess.Popen[str], text: str, seen: list[str], timeout: float = 150) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return
        assert time.monotonic() < deadline, "".join(seen)
    pytest.fail(f"{text!r} never printed:\n{''.join(seen)}")


@pytest.fixture
def up_process(tmp_path: Path) -> Iterator[tuple[Lab, subprocess.Popen[str], list[str]]]:
    lab = isolated_lab(tmp_path / "lab")
    proc = start_up(lab, columns=50)  # narrower than its messages: each must stay one line (a log file is read so)
    seen: list[str] = []
    try:
        read_until(proc, "Ctrl-C stops the lab", seen)
        yield lab, proc, seen
    finally:  # never leave a lab behind a failed test
        proc.kill()
        proc.wait(10)
        orchestrate.stop_pids(lab, timeout=5)


def test_foreground_up_restarts_a_killed_service_and_stops_within_2_s(
    up_process: tuple[Lab, subprocess.Popen[str], list[str]],
) -> None:
    lab, proc, seen = up_process
    printed = "".join(seen)
    for argv in orchestrate.check_commands(lab):  # the README's dsregcmd /status and ccmexec lines
        assert " ".join(argv[:2]) in printed
    pids = orchestrate.running_pids(lab)
    assert set(pids) == set(SERVICES)
    os.kill(pids["cmg"], signal.SIGKILL)
    read_until(proc, "cmg was killed by SIGKILL; restarted as pid", seen, timeout=10)
    assert re.fullmatch(r"cmg was killed by SIGKILL; restarted as pid \d+ \(restart 1 of 3 within 60 s\)\n", seen[-1])
    assert not is_zombie(pids["cmg"]), "the killed CMG was never reaped"
    read_until(proc, "cmg is healthy again", seen, timeout=90)
    new = orchestrate.running_pids(lab)["cmg"]
    assert new != pids["cmg"] and orchestrate.health(lab, ("cmg",))["cmg"] == "healthy"

    proc.send_signal(signal.SIGINT)
    read_until(proc, "stopped ", seen, timeout=30)
    stopped = re.search(r"stopped (.*) in (\d+\.\d) s", seen[-1])
    assert stopped and set(stopped[1].split(", ")) == set(SERVICES), seen[-1]
    # the lab's own clock, as the user reads it (it kills what has not stopped after 1 s), not this test's,
    # whose pipe reads a loaded machine can delay
    assert float(stopped[2]) <= 2.0, f"Ctrl-C took {stopped[2]} s: {seen[-1]}"
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert orchestrate.running_pids(lab) == {} and lab_processes(lab) == []


def test_cmglab_down_stops_a_foreground_up(up_process: tuple[Lab, subprocess.Popen[str], list[str]]) -> None:
    """`cmglab down` from another shell stops a foreground lab: the services stay down (its supervisor does not
    restart them) and `up` itself ends, as on Ctrl-C."""
    lab, proc, seen = up_process
    assert orchestrate.foreground_pid_file(lab).read_text().strip() == str(proc.pid)
    down = subprocess.run(
        [sys.executable, "-m", "cmglab", "down", "--lab", str(lab.dir)], capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"stopped the foreground cmglab up (pid {proc.pid})" in down.stdout, down.stdout
    read_until(proc, "stopped ", seen, timeout=30)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    printed = "".join(seen)
    assert "restarted as pid" not in printed, printed
    assert orchestrate.running_pids(lab) == {} and lab_processes(lab) == []
    assert not orchestrate.foreground_pid_file(lab).exists()


def test_up_that_cannot_start_a_service_stops_the_others(tmp_path: Path) -> None:
    lab = isolated_lab(tmp_path / "lab")
    break_cmg(lab)
    proc = start_up(lab, "--detach")
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 1, out
        assert "cmg exited with" in out, out
        assert lab_processes(lab) == [], out
        assert orchestrate.running_pids(lab) == {}
        assert list((lab.dir / "run").glob("*.pid")) == []
    finally:
        proc.kill()
        orchestrate.stop_pids(lab, timeout=5)


def test_harness_that_cannot_start_a_service_stops_the_others(tmp_path: Path) -> None:
    lab = isolated_lab(tmp_path / "lab")
    break_cmg(lab)
    with LabProcesses(lab) as procs:
        procs.ensure("pki")  # started before: ensure's failure leaves it to its owner
        with pytest.raises(ServiceFailed, match="cmg exited with"):
            procs.ensure("management-point", "cmg", "cmg-connection-point")
        assert list(procs.procs) == ["pki"] and procs.procs["pki"].alive()
        assert len(lab_processes(lab)) == 1
    assert lab_processes(lab) == []


def test_a_test_run_stopped_with_sigterm_stops_its_services(tmp_path: Path) -> None:
    """A CI timeout kills pytest with SIGTERM: its session lab's services go with it."""
    pidfile = tmp_path / "pki.pid"
    (tmp_path / "test_holds_a_lab.py").write_text(
        "import time\n"
        "def test_holds(lab_services):\n"
        "    lab_services.ensure('pki')\n"
        f"    open({str(pidfile)!r}, 'w').write(str(lab_services.procs['pki'].proc.pid))\n"
        "    time.sleep(120)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_holds_a_lab.py"),
        ],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not pidfile.exists() or not pidfile.read_text():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
            time.sleep(0.2)
        pid = int(pidfile.read_text())
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
        assert not Path(f"/proc/{pid}").exists(), f"the run's CRL host (pid {pid}) outlived it:\n{out}"
    finally:
        run.kill()
        with contextlib.suppress(ProcessLookupError, UnboundLocalError):
            os.kill(pid, signal.SIGKILL)


def test_a_service_that_keeps_dying_is_restarted_three_times_then_left(tmp_path: Path) -> None:
    lab = isolated_lab(tmp_path / "lab")
    break_cmg(lab)  # it exits at every start
    with LabProcesses(lab) as procs:
        procs.start("cmg", wait=False)
        supervisor = orchestrate.Supervisor(lab, procs)
        events: list[str] = []
        deadline = time.monotonic() + 120
        while not any("not restarted" in e for e in events):
            assert time.monotonic() < deadline, events
            events += supervisor.check()
            time.sleep(0.2)
    restarted = [e for e in events if "restarted as pid" in e]
    assert [re.search(r"restart (\d) of 3", e)[1] for e in restarted] == ["1", "2", "3"], events  # type: ignore[index]
    assert re.fullmatch(
        r"cmg exited with code \d+; not restarted: 3 restarts within 60 s \(its output: \S+cmg\.out\)", events[-1]
    ), events
    assert "cmg" not in procs.procs and not orchestrate.pid_file(lab, "cmg").exists()
