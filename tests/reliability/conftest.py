"""Budgets for the reliability suite: CI's by default, longer ones on request.

pytest honours `pytest_addoption` only in the rootdir's conftest, in plugins,
and in the conftests of the paths given on the command line. So the options
below work when this directory is named:

    python -m pytest -q tests/reliability --long
    python -m pytest -q tests/reliability --kill-rounds 200 --fuzz-examples 20000

and, for any other invocation (`python -m pytest -q` from the root), the same
budgets come from environment variables (an option beats its variable):

    IPAMD_RELIABILITY_LONG=1          the long budgets below
    IPAMD_RELIABILITY_ROUNDS=N        kill -9 rounds                (CI 20, long 100)
    IPAMD_FUSE_ROUNDS=N               power-loss rounds on FUSE     (CI 5, long 20)
    IPAMD_CORRUPTION_FLIPS=N          random byte flips per file    (CI 8, long 60)
    IPAMD_FUZZ_EXAMPLES=N             hypothesis examples           (CI 300, long 3000)
    IPAMD_IDLE_CONNECTIONS=N          idle connections              (CI 1000, long 10000)
    IPAMD_RELIABILITY_SEED=N          the seed of every randomised test (default: random)

Every randomised test prints the seed it ran with; rerun with that seed to
reproduce it.
"""

from __future__ import annotations

import os
import secrets

import pytest

from tests.reliability.harness import Budget

# name: (option, environment variable, CI budget, long budget)
BUDGETS: dict[str, tuple[str, str, int, int]] = {
    "kill_rounds": ("--kill-rounds", "IPAMD_RELIABILITY_ROUNDS", 20, 100),
    "fuse_rounds": ("--fuse-rounds", "IPAMD_FUSE_ROUNDS", 5, 20),
    "corruption_flips": ("--corruption-flips", "IPAMD_CORRUPTION_FLIPS", 8, 60),
    "fuzz_examples": ("--fuzz-examples", "IPAMD_FUZZ_EXAMPLES", 300, 3000),
    "idle_connections": ("--idle-connections", "IPAMD_IDLE_CONNECTIONS", 1000, 10000),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ipamd reliability", "budgets of tests/reliability")
    group.addoption(
        "--long",
        action="store_true",
        default=None,
        help="run the long variants (same as IPAMD_RELIABILITY_LONG=1)",
    )
    for name, (option, variable, ci, long) in BUDGETS.items():
        group.addoption(
            option,
            type=int,
            default=None,
            dest=f"ipamd_{name}",
            metavar="N",
            help=f"{name.replace('_', ' ')} (CI {ci}, --long {long}; or {variable})",
        )
    group.addoption(
        "--reliability-seed",
        type=int,
        default=None,
        dest="ipamd_seed",
        metavar="N",
        help="seed of the randomised tests (or IPAMD_RELIABILITY_SEED; default random)",
    )


def _option(config: pytest.Config, dest: str) -> object:
    try:
        return config.getoption(dest)
    except ValueError:  # this conftest was not loaded early enough to add its options
        return None


def _env_int(variable: str) -> int | None:
    raw = os.environ.get(variable)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"{variable} must be an integer, got {raw!r}") from None


@pytest.fixture(scope="session")
def budget(pytestconfig: pytest.Config) -> Budget:
    long = bool(_option(pytestconfig, "long")) or os.environ.get(
        "IPAMD_RELIABILITY_LONG", ""
    ) not in ("", "0")
    values: dict[str, int] = {}
    for name, (_option_name, variable, ci, long_default) in BUDGETS.items():
        chosen = _option(pytestconfig, f"ipamd_{name}")
        if chosen is None:
            chosen = _env_int(variable)
        values[name] = int(chosen) if chosen is not None else (long_default if long else ci)
    seed = _option(pytestconfig, "ipamd_seed")
    if seed is None:
        seed = _env_int("IPAMD_RELIABILITY_SEED")
    if seed is None:
        seed = secrets.randbelow(2**32)
    return Budget(long=long, seed=int(seed), **values)
