"""Fixtures shared by the whole suite, each built once per test run."""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from types import SimpleNamespace

import pytest

from VertebralMarrowLib.phantom import make_phantom


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory):
    """make(seed) -> (folder, ground truth): the synthetic study, written once per seed for the
    whole run. The folder is shared: read it, never write into it (see `phantom_copy`)."""
    made = {}

    def make(seed: int):
        if seed not in made:
            folder = tmp_path_factory.mktemp(f"phantom_seed{seed}")
            made[seed] = (folder, make_phantom(folder, seed=seed))
        return made[seed]

    return make


@pytest.fixture(scope="session")
def phantom_copy(phantom_study, tmp_path_factory):
    """copy(seed) -> (folder, ground truth): a private copy of the study, for tests that change it."""

    def make_copy(seed: int):
        folder, truth = phantom_study(seed)
        target = tmp_path_factory.mktemp(f"phantom_copy_seed{seed}") / "study"
        shutil.copytree(folder, target)
        return target, copy.deepcopy(truth)

    return make_copy


def run_cli_in_process(args) -> SimpleNamespace:
    """`vertebral-marrow ARGS` run by `cli.main` in this process, with what it wrote to the
    file descriptors 1 and 2 (so VTK's and ITK's own log lines are caught too): returncode,
    stdout, stderr. Much faster than a subprocess; each entry point keeps one subprocess smoke."""
    from VertebralMarrowLib.cli import main

    captured = {}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    files = {fd: tempfile.TemporaryFile(mode="w+b") for fd in (1, 2)}
    try:
        for fd, handle in files.items():
            os.dup2(handle.fileno(), fd)
        streams = sys.stdout, sys.stderr  # pytest's own capture objects, not the descriptors
        sys.stdout, sys.stderr = (open(fd, "w", encoding="utf-8", closefd=False) for fd in (1, 2))
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # --help and --version
            code = exc.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = streams
    finally:
        for fd, copy_fd in saved.items():
            os.dup2(copy_fd, fd)
            os.close(copy_fd)
    for fd, handle in files.items():
        handle.seek(0)
        captured[fd] = handle.read().decode("utf-8", "replace")
        handle.close()
    return SimpleNamespace(returncode=code, stdout=captured[1], stderr=captured[2])
