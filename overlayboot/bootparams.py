"""Other live systems' boot parameters (live-boot, archiso, dracut) as overlayboot's own.

:func:`translate` runs before :mod:`overlayboot.cmdline` parses a command line: every
parameter of :data:`RULES` becomes the ``overlayboot.*`` parameter(s) that do the same
thing here, or one warning saying it is not supported and what to use instead. Nothing
in the table is ignored silently; parameters not in it pass through unchanged.

A command line in one tool's style also looks for the image where that tool puts it,
unless ``overlayboot.image=`` names it: dracut ``/LiveOS/squashfs.img`` (``rd.live.dir``,
``rd.live.squashimg``), archiso ``/arch/x86_64/airootfs.sfs`` (``archisobasedir``),
live-boot ``/live/filesystem.squashfs`` (``live-media-path``). An ISO file to look for
(``findiso=``, ``iso-scan/filename=``, ``img_loop=``) with no medium named on the command
line makes the boot search every disk for it, as those tools do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Param = tuple[str, "str | None"]

LIVE_BOOT = "live-boot"
ARCHISO = "archiso"
DRACUT = "dracut"
ARCH = "x86_64"  # archiso's ${arch}: the only architecture overlayboot builds


@dataclass(frozen=True)
class Translated:
    """A command line with the other tools' parameters replaced by overlayboot's own."""

    params: tuple[Param, ...]
    origins: tuple[str | None, ...]  # per parameter: the word it was translated from
    warnings: tuple[str, ...] = ()
    tools: frozenset[str] = frozenset()  # the tools whose parameters were seen


@dataclass
class _Line:
    """What translating one command line has gathered so far (local to :func:`translate`)."""

    out: list[Param] = field(default_factory=list)
    origins: list[str | None] = field(default_factory=list)
    word: str | None = None  # the parameter being translated
    warnings: list[str] = field(default_factory=list)
    tools: set[str] = field(default_factory=set)
    medium_named: bool = False
    findiso: bool = False
    dracut_dir: str = "LiveOS"
    dracut_img: str = "squashfs.img"
    archiso_base: str = "arch"
    live_path: str | None = None
    persistence_at: int | None = None  # where live-boot's ``persistence`` stood in ``out``
    persistence_label: str = "persistence"

    def emit(self, key: str, value: str | None = None, word: str | None = None) -> None:
        self.out.append((f"overlayboot.{key}", value))
        self.origins.append(word or self.word)

    def keep(self, key: str, value: str | None) -> None:
        self.out.append((key, value))
        self.origins.append(None)

    def warn(self, word: str, tool: str, instead: str) -> None:
        self.warnings.append(f"{word} ({tool}) is not supported: {instead}")


Handler = Callable[[_Line, str, "str | None"], None]


@dataclass(frozen=True)
class Rule:
    """One foreign parameter: its tool, what overlayboot does with it, and how."""

    tool: str
    does: str  # the README table's third column
    handler: Handler


def _word(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


def _yes(value: str | None) -> bool:
    return value is None or value.lower() not in ("0", "n", "no", "off", "false")


def _abs(path: str) -> str:
    return "/" + path.strip("/")


# --- handlers: (line, key, value) ------------------------------------------------------


def _tool_only(line: _Line, key: str, value: str | None) -> None:
    """boot=live, rd.live.image: they only say which tool's command line this is."""


def _medium(line: _Line, key: str, value: str | None) -> None:
    if not value:
        line.warn(_word(key, value), RULES[key].tool, "give a device, e.g. LABEL=name")
        return
    if value.startswith("removable"):
        line.emit("medium", "scan")
    elif key in ("archisolabel", "img_label"):
        line.emit("medium", f"LABEL={value}")
    elif key == "archisosearchuuid":
        line.emit("medium", f"UUID={value}")
    else:
        line.emit("medium", value)
    line.medium_named = True


def _findiso(line: _Line, key: str, value: str | None) -> None:
    if not value:
        line.warn(_word(key, value), RULES[key].tool, "give the ISO file's path")
        return
    line.emit("findiso", value)
    line.findiso = True


def _toram(line: _Line, key: str, value: str | None) -> None:
    if key == "copytoram" and value == "auto":
        line.warn("copytoram=auto", ARCHISO, "copytoram=y copies the image to RAM, else it stays")
        return
    line.emit("toram", "1" if key == "toram" or _yes(value) else "0")


def _check(line: _Line, key: str, value: str | None) -> None:
    line.emit("check", "1" if key == "verify-checksums" or _yes(value) else "0")


def _persistence(line: _Line, key: str, value: str | None) -> None:
    if key == "nopersistence":
        line.persistence_at = None
        line.emit("upper", "tmpfs")
    elif key == "persistence-label":
        line.persistence_label = value or line.persistence_label
    else:
        line.persistence_at = len(line.out)


def _encryption(line: _Line, key: str, value: str | None) -> None:
    if value not in ("none", "luks"):
        line.warn(_word(key, value), LIVE_BOOT, "a persistence is plain or LUKS, recognised")


def _live_media_path(line: _Line, key: str, value: str | None) -> None:
    line.live_path = _abs(value or "live")


def _union(line: _Line, key: str, value: str | None) -> None:
    if value != "overlay":
        line.warn(_word(key, value), LIVE_BOOT, "overlayboot.overlay=fuse or =kernel (overlayfs)")


def _upper_device(line: _Line, key: str, value: str | None) -> None:
    if not value:
        return
    dev = f"LABEL={value}" if key == "cow_label" else value
    line.emit("upper", "tmpfs" if key == "rd.live.overlay" and value == "none" else dev)


def _upper_dir(line: _Line, key: str, value: str | None) -> None:
    """archiso's cow_directory: a directory on the cow device (after cow_label/cow_device)."""
    for i in range(len(line.out) - 1, -1, -1):
        k, v = line.out[i]
        if k == "overlayboot.upper" and v and v != "tmpfs":
            line.out[i] = (k, f"{v.split(':', 1)[0]}:{_abs(value or '')}")
            return
    line.warn(_word(key, value), ARCHISO, "give cow_label= or cow_device= before it")


def _upper_size(line: _Line, key: str, value: str | None) -> None:
    if value:
        line.emit("upper.size", value + "M" if key.startswith("rd.") and value.isdigit() else value)


def _archiso_base(line: _Line, key: str, value: str | None) -> None:
    line.archiso_base = (value or "arch").strip("/")
    line.keep(key, value)  # the network forms read it too (archiso_http_srv: overlayboot.net)


def _dracut_image(line: _Line, key: str, value: str | None) -> None:
    if key == "rd.live.dir":
        line.dracut_dir = (value or "LiveOS").strip("/")
    elif value:
        line.dracut_img = value


def _mode(line: _Line, key: str, value: str | None) -> None:
    line.emit("upper.reset" if key.endswith("reset") else "upper.readonly", "1")


def _debug(line: _Line, key: str, value: str | None) -> None:
    line.emit("debug", "1" if _yes(value) else "0")


def _unsupported(instead: str) -> Handler:
    def handler(line: _Line, key: str, value: str | None) -> None:
        line.warn(_word(key, value), RULES[key].tool, instead)

    return handler


RULES: dict[str, Rule] = {
    # live-boot (Debian live)
    "boot": Rule(LIVE_BOOT, "`boot=live`: accepted (the initramfs is a live boot)", _tool_only),
    "findiso": Rule(LIVE_BOOT, "`overlayboot.findiso=`; every disk is searched", _findiso),
    "toram": Rule(LIVE_BOOT, "`overlayboot.toram` (the whole image)", _toram),
    "live-media": Rule(LIVE_BOOT, "`overlayboot.medium=` (`removable`: every disk)", _medium),
    "bootfrom": Rule(LIVE_BOOT, "`overlayboot.medium=`", _medium),
    "live-media-path": Rule(LIVE_BOOT, "the image is `DIR/filesystem.squashfs`", _live_media_path),
    "persistence": Rule(
        LIVE_BOOT, "`overlayboot.upper=name:persistence` (or `persistence-label`)", _persistence
    ),
    "persistence-label": Rule(LIVE_BOOT, "the label `persistence` looks for", _persistence),
    "nopersistence": Rule(LIVE_BOOT, "`overlayboot.upper=tmpfs`", _persistence),
    "persistence-read-only": Rule(LIVE_BOOT, "`overlayboot.upper.readonly`", _mode),
    "persistence-encryption": Rule(LIVE_BOOT, "accepted: LUKS is recognised", _encryption),
    "persistence-path": Rule(
        LIVE_BOOT,
        "WARNING: not supported",
        _unsupported("overlayboot.upper=DEV:DIR names a directory"),
    ),
    "verify-checksums": Rule(LIVE_BOOT, "`overlayboot.check` (SHA256SUMS)", _check),
    "union": Rule(LIVE_BOOT, "`overlay`: accepted; others: WARNING", _union),
    # archiso (Arch Linux)
    "archisolabel": Rule(ARCHISO, "`overlayboot.medium=LABEL=`", _medium),
    "archisodevice": Rule(ARCHISO, "`overlayboot.medium=`", _medium),
    "archisosearchuuid": Rule(ARCHISO, "`overlayboot.medium=UUID=`", _medium),
    "archisobasedir": Rule(ARCHISO, "the image is `/DIR/x86_64/airootfs.sfs`", _archiso_base),
    "copytoram": Rule(ARCHISO, "`overlayboot.toram` (`auto`: WARNING)", _toram),
    "copytoram_size": Rule(
        ARCHISO, "WARNING: not supported", _unsupported("the RAM copy is as large as the image")
    ),
    "cow_label": Rule(ARCHISO, "`overlayboot.upper=LABEL=`", _upper_device),
    "cow_device": Rule(ARCHISO, "`overlayboot.upper=`", _upper_device),
    "cow_directory": Rule(ARCHISO, "`overlayboot.upper=DEV:DIR`", _upper_dir),
    "cow_spacesize": Rule(ARCHISO, "`overlayboot.upper.size=`", _upper_size),
    "checksum": Rule(ARCHISO, "`overlayboot.check` (SHA256SUMS, not airootfs.sha512)", _check),
    "verify": Rule(
        ARCHISO, "WARNING: not supported", _unsupported("checksum (SHA256SUMS) checks the medium")
    ),
    "img_dev": Rule(ARCHISO, "`overlayboot.medium=`", _medium),
    "img_label": Rule(ARCHISO, "`overlayboot.medium=LABEL=`", _medium),
    "img_loop": Rule(ARCHISO, "`overlayboot.findiso=`", _findiso),
    # dracut's dmsquash-live (Fedora); root=live: is overlayboot.cmdline's own
    "rd.live.image": Rule(DRACUT, "accepted (the image is `/LiveOS/squashfs.img`)", _tool_only),
    "rd.live.dir": Rule(DRACUT, "the image's directory (default `LiveOS`)", _dracut_image),
    "rd.live.squashimg": Rule(DRACUT, "the image's name in `rd.live.dir`", _dracut_image),
    "rd.live.ram": Rule(DRACUT, "`overlayboot.toram`", _toram),
    "rd.live.overlay": Rule(DRACUT, "`overlayboot.upper=DEV[:DIR]` (`none`: tmpfs)", _upper_device),
    "rd.live.overlay.size": Rule(DRACUT, "`overlayboot.upper.size=` (MiB)", _upper_size),
    "rd.live.overlay.overlayfs": Rule(DRACUT, "accepted (always an overlay)", _tool_only),
    "rd.live.overlay.readonly": Rule(DRACUT, "`overlayboot.upper.readonly`", _mode),
    "rd.live.overlay.reset": Rule(DRACUT, "`overlayboot.upper.reset`", _mode),
    "rd.live.check": Rule(
        DRACUT, "`overlayboot.check` (SHA256SUMS, not the implanted MD5)", _check
    ),
    "rd.live.debug": Rule(DRACUT, "`overlayboot.debug`", _debug),
    "iso-scan/filename": Rule(DRACUT, "`overlayboot.findiso=`; every disk is searched", _findiso),
    "rd.writable.fsimg": Rule(
        DRACUT, "WARNING: not supported", _unsupported("overlayboot.toram copies the image to RAM")
    ),
}

_IMAGE_PARAMS = frozenset({"overlayboot.image"})
_MEDIUM_PARAMS = frozenset({"overlayboot.medium"})


def _applies(key: str, value: str | None) -> bool:
    if key == "boot":
        return value == "live"
    return key in RULES


def _defaults(line: _Line) -> list[Param]:
    """What the tool's style implies, placed before the command line's own parameters."""
    first: list[Param] = []
    if DRACUT in line.tools:
        img = line.dracut_img
        first.append(
            ("overlayboot.image", img if img.startswith("/") else f"/{line.dracut_dir}/{img}")
        )
    elif ARCHISO in line.tools:
        first.append(("overlayboot.image", f"/{line.archiso_base}/{ARCH}/airootfs.sfs"))
    elif line.live_path is not None:
        first.append(("overlayboot.image", f"{line.live_path}/filesystem.squashfs"))
    if line.findiso and not line.medium_named:
        first.append(("overlayboot.medium", "scan"))
    return first


def translate(params: Iterable[Param]) -> Translated:
    """Replace the other tools' parameters by overlayboot's own (see the module's text)."""
    line = _Line()
    for key, value in params:
        if key == "root" and value and value.startswith("live:"):
            line.tools.add(DRACUT)
            line.medium_named = True
        if key in _MEDIUM_PARAMS:
            line.medium_named = True
        if not _applies(key, value):
            line.keep(key, value)
            continue
        rule = RULES[key]
        line.tools.add(rule.tool)
        line.word = _word(key, value)
        rule.handler(line, key, value)
    if line.persistence_at is not None:
        at = line.persistence_at
        line.out.insert(at, ("overlayboot.upper", f"name:{line.persistence_label}"))
        line.origins.insert(at, "persistence")
    first = _defaults(line)
    if any(k in _IMAGE_PARAMS for k, _ in line.out):
        first = [(k, v) for k, v in first if k not in _IMAGE_PARAMS]
    return Translated(
        tuple(first + line.out),
        tuple([None] * len(first) + line.origins),
        tuple(line.warnings),
        frozenset(line.tools),
    )
