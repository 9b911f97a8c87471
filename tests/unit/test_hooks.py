"""The hook runner against real `sh` snippets."""

import os
import threading
import time

import pytest

from llmux.config import parse_config
from llmux.engine.hooks import TAIL_BYTES, HookRunner, OutputKeeper, run_hook
from tests.support import process_alive as alive


def test_exit_code_and_output():
    r = run_hook("echo out; echo err >&2; exit 3", hook="wake", timeout=5)
    assert (r.returncode, r.ok, r.timed_out) == (3, False, False)
    assert (r.stdout, r.stderr) == ("out\n", "err\n")
    assert r.describe() == "wake hook failed with exit code 3: err"


def test_success():
    r = run_hook("true", timeout=5)
    assert r.ok and r.returncode == 0 and r.duration < 1


def test_stderr_tail_is_the_end():
    r = run_hook("i=0; while [ $i -lt 3000 ]; do echo line$i >&2; i=$((i+1)); done", timeout=10)
    assert r.stderr.endswith("line2999\n")
    assert r.describe().endswith("line2999")


def test_timeout_kills_the_whole_process_group(tmp_path):
    pids = tmp_path / "pids"
    snippet = f"sleep 1000 & echo $! >> {pids}; sleep 1000 & echo $! >> {pids}; wait"
    started = time.monotonic()
    r = run_hook(snippet, hook="wake", timeout=0.5, kill_grace=1)
    assert r.timed_out and not r.ok
    assert r.returncode == -15  # the shell died of our SIGTERM
    assert time.monotonic() - started < 1.4
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    assert not any(alive(p) for p in children), "a grandchild survived the timeout"
    assert r.describe().startswith("wake hook timed out after 0.5s")


def test_a_stop_ends_the_whole_process_group_at_once(tmp_path):
    pids = tmp_path / "pids"
    snippet = f"sleep 1000 & echo $! >> {pids}; echo loading; sleep 1000 & echo $! >> {pids}; wait"
    stop = threading.Event()

    class StopWhenTwoChildren:
        """Sets ``stop`` once both grandchildren exist, from inside the runner's loop."""

        def spawned(self, pgid):
            def watch():
                deadline = time.monotonic() + 10  # then stop anyway: the asserts will say
                while time.monotonic() < deadline:
                    if pids.exists() and len(pids.read_text().split()) == 2:
                        break
                    time.sleep(0.01)
                stop.set()

            threading.Thread(target=watch, daemon=True).start()

        def exited(self, pgid):
            pass

    started = time.monotonic()
    r = run_hook(
        snippet, hook="wake", timeout=60, kill_grace=1, stop=stop, tracker=StopWhenTwoChildren()
    )
    assert r.aborted and not r.timed_out and not r.ok
    assert time.monotonic() - started < 5  # not the 60 s timeout
    assert not any(alive(int(p)) for p in pids.read_text().split())
    assert r.stdout == "loading\n"
    assert r.describe().startswith("wake hook stopped by llmux after")


def test_timeout_escalates_to_sigkill(tmp_path):
    pids = tmp_path / "pids"
    snippet = f"trap '' TERM; (trap '' TERM; sleep 1000) & echo $! > {pids}; sleep 1000"
    started = time.monotonic()
    r = run_hook(snippet, timeout=0.3, kill_grace=0.3)
    assert r.timed_out and r.returncode == -9
    assert time.monotonic() - started < 1.5
    assert not alive(int(pids.read_text()))


def test_a_background_daemon_with_redirected_output_does_not_hold_the_hook(tmp_path):
    pidfile = tmp_path / "daemon.pid"
    started = time.monotonic()
    r = run_hook(f"sleep 30 >/dev/null 2>&1 & echo $! > {pidfile}; echo started", timeout=10)
    assert r.ok and r.stdout == "started\n"
    assert time.monotonic() - started < 1
    pid = int(pidfile.read_text())
    try:
        assert alive(pid), "llmux killed the daemon a successful hook started"
    finally:
        os.kill(pid, 9)


def test_a_background_child_keeping_the_pipes_open_does_not_hold_the_hook(tmp_path):
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    r = run_hook(f"sleep 30 & echo $! > {pidfile}; echo started", timeout=10)
    assert r.ok and time.monotonic() - started < 1
    os.kill(int(pidfile.read_text()), 9)


def test_ten_megabytes_of_output_stay_bounded():
    r = run_hook("head -c 10000000 /dev/zero | tr '\\0' a; echo end >&2", timeout=20)
    assert r.ok
    assert len(r.stdout) == TAIL_BYTES and set(r.stdout) == {"a"}
    assert r.stderr == "end\n"


def test_cannot_start():
    r = run_hook("true", timeout=5, cwd="/nonexistent/dir")
    assert not r.ok and r.error and "could not start" in r.describe()


def test_runner_environment_and_working_directory(tmp_path, monkeypatch):
    config = parse_config(
        {
            "models": {
                "qwen": {
                    "port": 8123,
                    "wake": "pwd; env",
                    "sleep": "true",
                    "alive": "true",
                    "env": {"CUDA_VISIBLE_DEVICES": 1, "EXTRA": "x y"},
                }
            }
        },
        str(tmp_path / "llmux.yaml"),
    )
    monkeypatch.setenv("LLMUX_TEST_INHERITED", "yes")
    r = HookRunner(config).run("qwen", "wake")
    assert r.ok
    lines = r.stdout.splitlines()
    assert lines[0] == str(tmp_path)
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert env["LLMUX_MODEL"] == "qwen"
    assert env["LLMUX_PORT"] == "8123"
    assert env["LLMUX_HOOK"] == "wake"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["EXTRA"] == "x y"
    assert env["LLMUX_TEST_INHERITED"] == "yes"


def test_runner_uses_configured_timeouts(tmp_path):
    config = parse_config(
        {
            "models": {
                "m": {
                    "port": 8124,
                    "wake": "sleep 5",
                    "sleep": "true",
                    "alive": "sleep 5",
                    "timeouts": {"wake": 0.2, "kill_grace": 0.2},
                }
            },
            "hooks": {"alive_timeout": 0.3},
        },
        str(tmp_path / "llmux.yaml"),
    )
    runner = HookRunner(config)
    r = runner.run("m", "wake")
    assert r.timed_out and r.duration < 1
    r = runner.run("m", "alive")
    assert r.timed_out and 0.25 < r.duration < 1.2


@pytest.mark.parametrize("stdin_probe", ["read x; echo got:$x"])
def test_stdin_is_empty(stdin_probe):
    r = run_hook(stdin_probe, timeout=5)
    assert r.stdout == "got:\n"


def test_a_background_writer_keeps_its_pipes_after_the_shell_exits(tmp_path):
    """A server started with `&` and no redirection logs on: no SIGPIPE, bounded tail."""
    keeper = OutputKeeper(every=0.05)
    status = tmp_path / "status"
    # 200 KB written after the shell exited, then an exit status only a writer
    # that was never killed by SIGPIPE gets to record
    snippet = (
        "( sleep 0.3; i=0; while [ $i -lt 2000 ]; do "
        'echo "line $i ........................................................................"; '
        f"i=$((i+1)); done; echo last >&2; echo done > {status} ) &"
        " echo started"
    )
    started = time.monotonic()
    r = run_hook(snippet, timeout=10, keeper=keeper, owner="llama")
    assert r.ok and r.stdout == "started\n" and time.monotonic() - started < 1
    assert keeper.kept("llama") == 2
    deadline = time.monotonic() + 10
    while not status.exists() or keeper.kept("llama"):
        assert time.monotonic() < deadline, "the writer died or its pipes were never closed"
        time.sleep(0.02)
    assert status.read_text() == "done\n"
    tail = keeper.tail("llama")
    assert "last\n" in tail and "line 1999" in tail  # stdout and stderr, interleaved
    assert len(tail) <= TAIL_BYTES


def test_releasing_a_model_closes_the_pipes_its_daemon_holds(tmp_path):
    keeper = OutputKeeper(every=0.05)
    pidfile = tmp_path / "daemon.pid"
    r = run_hook(f"sleep 30 & echo $! > {pidfile}", timeout=10, keeper=keeper, owner="qwen")
    pid = int(pidfile.read_text())
    try:
        assert r.ok and keeper.kept("qwen") == 2 and keeper.kept("llama") == 0
        keeper.release("qwen")
        deadline = time.monotonic() + 5
        while keeper.kept():
            assert time.monotonic() < deadline, "released pipes were not closed"
            time.sleep(0.02)
        assert alive(pid)  # closing our end does not touch the process
    finally:
        os.kill(pid, 9)


def test_a_background_process_writing_without_pause_does_not_hold_the_hook(tmp_path):
    keeper = OutputKeeper(every=0.05)
    pidfile = tmp_path / "yes.pid"
    started = time.monotonic()
    r = run_hook(f"yes & echo $! > {pidfile}", timeout=10, keeper=keeper, owner="m")
    pid = int(pidfile.read_text())
    try:
        assert r.ok and time.monotonic() - started < 2
        assert len(r.stdout) <= TAIL_BYTES and keeper.kept("m") == 2
    finally:
        os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while keeper.kept():  # its writer is gone: end of file, closed
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_each_running_background_writer_keeps_its_own_pipes(tmp_path):
    """A later hook's writer never closes the pipes of an earlier one still running.

    A server that sleeps in place keeps writing; a helper a later hook starts
    must not make it die of SIGPIPE. Each pair is closed when its writer exits.
    """
    keeper = OutputKeeper(every=0.05)
    pids = []
    try:
        for i in range(2):
            pidfile = tmp_path / f"d{i}.pid"
            run_hook(f"sleep 30 & echo $! > {pidfile}", timeout=10, keeper=keeper, owner="m")
            pids.append(int(pidfile.read_text()))
        assert keeper.kept("m") == 4
        os.kill(pids.pop(0), 9)
        deadline = time.monotonic() + 5
        while keeper.kept("m") != 2:
            assert time.monotonic() < deadline, "the exited writer's pipes were not closed"
            time.sleep(0.02)
        assert alive(pids[0])
    finally:
        for pid in pids:
            os.kill(pid, 9)


def test_a_stop_set_before_the_hook_starts_starts_nothing(tmp_path):
    stop = threading.Event()
    stop.set()
    marker = tmp_path / "ran"
    r = run_hook(f"touch {marker}", hook="wake", timeout=5, stop=stop)
    assert r.aborted and r.returncode is None and not r.ok
    assert not marker.exists()


def test_a_hook_runs_in_its_directory_and_inherits_no_descriptor_of_llmux(tmp_path):
    import socket

    with socket.socket() as listener:  # gunicorn marks its listening sockets inheritable
        listener.set_inheritable(True)
        fd = listener.fileno()
        r = run_hook(
            f"pwd; [ -e /proc/$$/fd/{fd} ] && echo leaked; ls /proc/$$/fd",
            timeout=5,
            cwd=str(tmp_path),
        )
    assert r.ok, r.describe()
    lines = r.stdout.split()
    assert lines[0] == str(tmp_path)
    assert "leaked" not in lines
    assert sorted(int(x) for x in lines[1:])[:3] == [0, 1, 2]
    assert os.getcwd() != str(tmp_path)  # the parent's own directory is untouched
