"""Descriptors numbered 1024 and up: a busy proxy has them, and select() refuses them."""

from __future__ import annotations

import os
import resource
import socket

import pytest

from llmux.engine.hooks import run_hook
from llmux.polling import readable
from llmux.web.inbound import client_gone_probe


@pytest.fixture
def high_fds():
    """Occupy descriptors up to about 1100, so the next ones are past select()'s limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    base = os.open(os.devnull, os.O_RDONLY)
    held = [os.dup(base) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in [base, *held]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_hook_runs_when_its_pipes_are_past_1024(high_fds):
    result = run_hook("echo out; echo err >&2; exit 3", hook="wake", timeout=5, kill_grace=1)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_a_client_is_not_taken_for_gone_past_1024(high_fds):
    a, b = socket.socketpair()
    try:
        assert a.fileno() >= 1024
        gone = client_gone_probe({"gunicorn.socket": a})
        assert not gone()  # silent, but there
        b.sendall(b"x")
        assert readable([a], 0) == [a] and not gone()  # sent more: still there
        b.close()
        a.recv(1)
        assert gone()  # hung up
    finally:
        a.close()
        b.close()
