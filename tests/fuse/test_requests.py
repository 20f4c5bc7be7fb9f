"""The requests an operation costs (``bench.requests``: libfuse's debug log of a real mount).

Budgets that must not grow back: a cached directory is listed with no OPENDIR or
RELEASEDIR, a lower file is read with no READ (passthrough) and closed with no FLUSH.
Only requests no cache state can bring back are asserted (another process's
``drop_caches`` may add LOOKUPs and READDIRPLUS at any time).
"""

from __future__ import annotations

from pathlib import Path

from bench.requests import debug_mount, describe, measure


def test_request_budgets(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(30):
        (lower / "d" / f"f{i}").write_bytes(b"x" * 100)
    with debug_mount("overlayboot", lower, tmp_path / "run") as daemon:
        first = measure(daemon, "ls -l d; cat d/f1")
        assert first.requests.get("READDIRPLUS", 0) >= 1, describe(first)
        for _ in range(3):
            cost = measure(daemon, "ls d; ls -l d; cat d/f1")
            for op in ("OPENDIR", "RELEASEDIR", "READ", "FLUSH"):
                assert op not in cost.requests, describe(cost)
            assert cost.requests["OPEN"] == 1 and cost.requests["RELEASE"] == 1, describe(cost)
        made = measure(daemon, "echo hi > d/new; cat d/new; ls d")
        assert made.requests.get("CREATE") == 1, describe(made)
        assert "READ" not in made.requests and "WRITE" not in made.requests, describe(made)
    assert not (tmp_path / "run" / "mnt").is_mount()
