"""The kernel's passthrough rules as the daemon keeps them (``overlayboot.fs.passthrough``).

The kernel here is a stand-in that hands out ids and records closes; the real one is
exercised by tests/fuse/test_passthrough.py.
"""

from __future__ import annotations

import errno

import pytest

from overlayboot.fs.passthrough import Bindings


class Ids:
    def __init__(self, fail: int = 0) -> None:
        self.next = 1
        self.fail = fail
        self.opened: list[int] = []
        self.closed: list[int] = []

    def open_backing(self, fd: int) -> int:
        if self.fail:
            raise OSError(self.fail, "refused")
        self.opened.append(fd)
        self.next += 1
        return self.next - 1

    def close_backing(self, backing_id: int) -> None:
        self.closed.append(backing_id)


def test_without_a_kernel_nothing_is_bound() -> None:
    b = Bindings()
    assert b.attach(7, 3, upper=False, whole=True) == 0
    assert not b.bound_to_lower(7)
    b.detach(7)
    assert b.by_ino == {}


def test_one_backing_file_per_inode_while_files_are_open() -> None:
    b, ids = Bindings(), Ids()
    b.kernel = ids
    first = b.attach(7, 3, upper=False, whole=True)
    assert first > 0 and b.bound_to_lower(7)
    # a second open of the inode shares the backing file, whichever fd it has
    assert b.attach(7, 4, upper=True, whole=True) == first
    assert ids.opened == [3]
    b.detach(7)
    assert ids.closed == [] and b.bound_to_lower(7)
    b.detach(7)
    # idle: no file open, so a copy-up may use the inode; the binding is kept for reuse
    assert ids.closed == [] and not b.bound_to_lower(7)
    assert b.has_backing(7, upper=False)
    assert b.attach(7, -1, upper=False, whole=True) == first  # no fd needed
    b.detach(7)
    # copied up since: the next open binds the upper copy, the lower binding goes
    again = b.attach(7, 5, upper=True, whole=True)
    assert again != first and ids.closed == [first] and not b.bound_to_lower(7)


def test_idle_bindings_are_bounded_and_dropped_when_forgotten() -> None:
    b, ids = Bindings(max_idle=2), Ids()
    b.kernel = ids
    got = {ino: b.attach(ino, ino, upper=False, whole=True) for ino in (1, 2, 3)}
    for ino in (1, 2, 3):
        b.detach(ino)
    assert ids.closed == [got[1]]  # the least recently used idle one
    b.attach(2, -1, upper=False, whole=True)
    b.drop(2)  # in use: kept
    assert ids.closed == [got[1]]
    b.detach(2)
    b.drop(3)
    assert ids.closed == [got[1], got[3]] and list(b.by_ino) == [2]


def test_a_partial_file_is_served_by_the_daemon_and_keeps_the_inode_unbound() -> None:
    b, ids = Bindings(), Ids()
    b.kernel = ids
    assert b.attach(9, 3, upper=True, whole=False) == 0
    assert b.attach(9, 4, upper=True, whole=True) == 0  # the inode is in the daemon's mode
    assert ids.opened == []
    b.attach(8, 5, upper=False, whole=True)
    with pytest.raises(OSError) as exc:
        b.attach(8, 6, upper=True, whole=False)
    assert exc.value.errno == errno.EBUSY


def test_no_new_binding_when_asked_but_an_existing_one_is_shared() -> None:
    b, ids = Bindings(), Ids()
    b.kernel = ids
    assert b.attach(7, 3, upper=True, whole=True, bind=False) == 0
    bound = b.attach(8, 4, upper=False, whole=True)
    assert b.attach(8, 5, upper=True, whole=True, bind=False) == bound


@pytest.mark.parametrize(
    ("err", "stays_on"), [(errno.EINVAL, True), (errno.ELOOP, True), (errno.EPERM, False)]
)
def test_a_refused_file_stays_with_the_daemon(err: int, stays_on: bool) -> None:
    b = Bindings()
    b.kernel = Ids(fail=err)
    assert b.attach(7, 3, upper=False, whole=True) == 0
    assert b.enabled == stays_on  # EPERM (not root): no file will do


def test_an_upper_binding_goes_with_its_last_file() -> None:
    """An upper file may be unlinked: its backing file must not outlive its last close,
    even with a batch closer."""
    b, ids = Bindings(), Ids()
    b.kernel = ids
    b.wake = lambda: None
    got = b.attach(5, 3, upper=True, whole=True)
    b.attach(5, -1, upper=True, whole=True)
    b.detach(5)
    assert ids.closed == []
    b.detach(5)
    assert ids.closed == [got] and b.by_ino == {}


def test_dropped_ids_wait_for_the_closer_when_there_is_one() -> None:
    b, ids = Bindings(), Ids()
    b.kernel = ids
    woken: list[int] = []
    b.wake = lambda: woken.append(len(b.closing))
    for ino in range(1, 101):
        b.attach(ino, ino, upper=False, whole=True)
        b.detach(ino)
        b.drop(ino)
    assert ids.closed == [] and woken == [1]  # woken once, when the first one came
    assert b.close_pending() == 100 - 64
    assert b.close_pending() == 0
    assert sorted(ids.closed) == list(range(1, 101))
