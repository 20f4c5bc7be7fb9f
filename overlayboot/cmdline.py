"""The kernel command line -> a frozen boot configuration, and its export to the shell hooks.

The initramfs hooks are POSIX sh; they get their parameters from
``python -m overlayboot.cmdline``, which reads ``/proc/cmdline`` and the image
config baked in at build time (``/etc/overlayboot/image.conf``, ``KEY=VALUE``
lines), validates everything, and prints ``OB_*`` shell assignments. A bad
parameter is one ``ERROR:`` line on stderr and exit status 1.

Parameters (also the README's table): ``overlayboot.medium=``,
``overlayboot.image=``, ``overlayboot.findiso=``, ``overlayboot.upper=``,
``overlayboot.upper.size=``, ``overlayboot.toram``, ``overlayboot.overlay=``,
``overlayboot.block.chunk=``, ``overlayboot.break=``, ``overlayboot.debug``,
``overlayboot.timeout=``, ``overlayboot.onerror=``, ``overlayboot.check``, ``init=``; and
dracut's ``root=live:…``.
live-boot's, archiso's and dracut's other parameters are translated to these first
(:mod:`overlayboot.bootparams`); an error in one names the parameter as typed.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from overlayboot.bootparams import translate
from overlayboot.errors import UsageError
from overlayboot.net.config import NetConfig
from overlayboot.net.params import apply_param, check, parse_upper, shell_values

PHASES: tuple[str, ...] = ("early", "modules", "medium", "lower", "upper", "overlay", "switch")
# the network boot's phases (hooks/15-network.sh, 25-fetch.sh): by name only, no number
NET_PHASES: tuple[str, ...] = ("network", "fetch")
DEFAULT_IMAGE = "/live/filesystem.squashfs"
DEFAULT_BLOCK_IMAGE = "/live/filesystem.ext4"  # overlayboot.overlay=block: a filesystem image
DEFAULT_LABEL = "OVERLAYBOOT"
IMAGE_CONF = Path("/etc/overlayboot/image.conf")


class CmdlineError(UsageError):
    """A boot parameter that cannot be used."""


@dataclass(frozen=True)
class DeviceSpec:
    """How to find a block device: by filesystem label, UUID, partition label or path."""

    kind: str  # "label", "uuid", "partlabel", "path"; "name" (overlayboot.upper=name:);
    # "nbd" (overlayboot.upper=nbd://...: phase fetch attaches it and makes it a "path")
    value: str

    def __str__(self) -> str:
        return self.value if self.kind == "path" else f"{self.kind.upper()}={self.value}"


@dataclass(frozen=True)
class BootConfig:
    """Everything the boot phases need to know."""

    medium: DeviceSpec | None = None  # None: scan every block device for the image
    image: str = DEFAULT_IMAGE
    findiso: str | None = None
    upper: DeviceSpec | None = None  # None: a tmpfs
    upper_dir: str = ""  # a directory on the persistence device
    upper_size: str = "50%"
    upper_readonly: bool = False  # the saved changes are shown, new ones kept in RAM
    upper_reset: bool = False  # this image's saved changes are removed at boot
    toram: bool = False
    check: bool = False  # the medium against its SHA256SUMS (hooks/25-check.sh)
    layers: tuple[str, ...] = ()  # more squashfs images over the image (hooks/28-layers.sh)
    overlay: str = "fuse"
    block_chunk: str = ""  # overlayboot.block.chunk: a new block store's chunk size
    breaks: frozenset[str] = frozenset()
    debug: bool = False
    init: str = "/sbin/init"
    timeout: int = 30
    onerror: str = "shell"
    warnings: tuple[str, ...] = field(default=())
    net: NetConfig = field(default_factory=NetConfig)  # overlayboot.net.params


def split_cmdline(text: str) -> list[tuple[str, str | None]]:
    """Split like the kernel: spaces separate, double quotes group; ``key[=value]``."""
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        token: list[str] = []
        quoted = False
        while i < n and (quoted or not text[i].isspace()):
            if text[i] == '"':
                quoted = not quoted
            else:
                token.append(text[i])
            i += 1
        word = "".join(token)
        if word == "--":
            break  # the rest belongs to init
        key, sep, value = word.partition("=")
        out.append((key, value if sep else None))
    return out


def parse_device(value: str, what: str) -> DeviceSpec:
    for prefix, kind in (
        ("CDLABEL=", "label"),
        ("LABEL=", "label"),
        ("UUID=", "uuid"),
        ("PARTLABEL=", "partlabel"),
    ):
        if value.upper().startswith(prefix) and len(value) > len(prefix):
            return DeviceSpec(kind, value[len(prefix) :])
    if value.startswith("/dev/") and len(value) > 5:
        return DeviceSpec("path", value)
    raise CmdlineError(
        f"{what}={value!r} is not a device",
        "use LABEL=name, UUID=id, PARTLABEL=name or /dev/path",
    )


_SIZE = re.compile(r"^(\d+%|\d+[kKmMgG]?)$")


def parse_size(value: str, what: str) -> str:
    if not _SIZE.match(value) or value in ("0", "0%"):
        raise CmdlineError(f"{what}={value!r} is not a size", "use e.g. 50% or 2G")
    if value.endswith("%") and int(value[:-1]) > 100:
        raise CmdlineError(f"{what}={value!r} is more than 100%")
    return value


def _flag(value: str | None, what: str) -> bool:
    if value is None or value.lower() in ("1", "y", "yes", "on", "true"):
        return True
    if value.lower() in ("0", "n", "no", "off", "false"):
        return False
    raise CmdlineError(f"{what}={value!r} is not a yes/no value")


def _phase_list(value: str | None) -> frozenset[str]:
    if value is None or value == "":
        return frozenset({"switch"})
    out: set[str] = set()
    for item in value.split(","):
        name = item.strip()
        if name.isdigit() and 0 <= int(name) < len(PHASES):
            name = PHASES[int(name)]
        if name not in PHASES + NET_PHASES:
            raise CmdlineError(
                f"overlayboot.break={value!r}: unknown phase {item!r}",
                f"phases: {', '.join(PHASES + NET_PHASES)}",
            )
        out.add(name)
    return frozenset(out)


def parse_cmdline(text: str, defaults: Mapping[str, str] | None = None) -> BootConfig:
    """Parse a kernel command line over the image's baked-in defaults."""
    params: list[tuple[str, str | None]] = []
    for dkey, dvalue in (defaults or {}).items():
        params.append((dkey if "." in dkey or dkey == "init" else f"overlayboot.{dkey}", dvalue))
    origins: list[str | None] = [None] * len(params)
    foreign = translate(split_cmdline(text))  # live-boot, archiso, dracut: bootparams.py
    params += foreign.params
    origins += foreign.origins
    cfg = BootConfig(medium=DeviceSpec("label", DEFAULT_LABEL))
    warnings: list[str] = list(foreign.warnings)
    for (key, value), origin in zip(params, origins, strict=True):
        try:
            cfg = _param(cfg, key, value, warnings)
        except CmdlineError as exc:
            if origin is None:
                raise
            raise CmdlineError(f"{origin}: {exc.message}", exc.hint) from None
    if cfg.overlay == "block" and cfg.image == DEFAULT_IMAGE:
        cfg = replace(cfg, image=DEFAULT_BLOCK_IMAGE)
    return replace(cfg, warnings=tuple(warnings), net=check(cfg.net))


def _param(cfg: BootConfig, key: str, value: str | None, warnings: list[str]) -> BootConfig:
    net = apply_param(cfg.net, key, value)  # the network forms (overlayboot.net)
    if net is not None:
        return replace(cfg, net=net)
    if key == "root" and value and value.startswith("live:"):
        return replace(cfg, medium=parse_device(value[5:], "root=live:"))
    if key == "init":
        if not value or not value.startswith("/"):
            raise CmdlineError(f"init={value!r} is not an absolute path")
        return replace(cfg, init=value)
    if key.startswith("overlayboot."):
        return _overlayboot_param(cfg, key[len("overlayboot.") :], value, warnings)
    return cfg


def _need(value: str | None, key: str) -> str:
    if not value:
        raise CmdlineError(f"overlayboot.{key} needs a value: overlayboot.{key}=...")
    return value


def _overlayboot_param(
    cfg: BootConfig, key: str, value: str | None, warnings: list[str]
) -> BootConfig:
    if key == "medium":
        v = _need(value, key)
        return replace(cfg, medium=None if v == "scan" else parse_device(v, "overlayboot.medium"))
    if key == "image":
        v = _need(value, key)
        return replace(cfg, image=v if v.startswith("/") else "/" + v)
    if key == "findiso":
        v = _need(value, key)
        return replace(cfg, findiso=v if v.startswith("/") else "/" + v)
    if key.startswith("upper"):
        return _upper_param(cfg, key, value, warnings)
    if key == "toram":
        return replace(cfg, toram=_flag(value, "overlayboot.toram"))
    if key == "check":
        return replace(cfg, check=_flag(value, "overlayboot.check"))
    if key == "layers":
        return replace(cfg, layers=_layers(_need(value, key)))
    if key == "overlay":
        v = _need(value, key)
        if v not in ("fuse", "kernel", "block"):
            raise CmdlineError(f"overlayboot.overlay={v!r}", "use fuse, kernel or block")
        return replace(cfg, overlay=v)
    if key == "block.chunk":
        return replace(cfg, block_chunk=_block_chunk(_need(value, key)))
    if key == "break":
        return replace(cfg, breaks=cfg.breaks | _phase_list(value))
    if key == "debug":
        return replace(cfg, debug=_flag(value, "overlayboot.debug"))
    if key == "timeout":
        v = _need(value, key)
        if not v.isdigit() or not 0 < int(v) <= 3600:
            raise CmdlineError(f"overlayboot.timeout={v!r}", "give seconds, 1 to 3600")
        return replace(cfg, timeout=int(v))
    if key == "onerror":
        v = _need(value, key)
        if v not in ("shell", "poweroff", "reboot"):
            raise CmdlineError(f"overlayboot.onerror={v!r}", "use shell, poweroff or reboot")
        return replace(cfg, onerror=v)
    warnings.append(f"unknown parameter overlayboot.{key} ignored")
    return cfg


def _block_chunk(value: str) -> str:
    """A chunk size for ``block create --chunk-size``: a power of two from 4K to 1M."""
    m = re.fullmatch(r"(\d+)([KkMm]?)", value)
    size = int(m[1]) << {"": 0, "k": 10, "m": 20}[m[2].lower()] if m else 0
    if size < 4096 or size > 1 << 20 or size & (size - 1):
        raise CmdlineError(
            f"overlayboot.block.chunk={value!r} is not a power of two from 4K to 1M", "e.g. 64K"
        )
    return str(size)


def _layers(value: str) -> tuple[str, ...]:
    names = tuple(n for n in value.split(",") if n)
    for name in names:
        if any(c.isspace() for c in name) or ".." in name.split("/"):
            raise CmdlineError(
                f"overlayboot.layers={value!r}: bad image name {name!r}",
                "give names (or /paths on the medium) of squashfs images, comma-separated",
            )
    return names


def _upper_param(cfg: BootConfig, key: str, value: str | None, warnings: list[str]) -> BootConfig:
    """overlayboot.upper=, .upper.size=, .upper.readonly, .upper.reset (see the README)."""
    if key == "upper":
        v = _need(value, key)
        if v == "tmpfs":
            return replace(cfg, upper=None, upper_dir="")
        if v.startswith("nbd://"):  # a persistence on the server (phase fetch attaches it)
            net = replace(cfg.net, upper=parse_upper(v))
            return replace(cfg, upper=DeviceSpec("nbd", v), upper_dir="", net=net)
        if v.startswith("name:") and len(v) > 5 and "/" not in v[5:]:
            # a partition labelled NAME, else a file /NAME on any partition (live-boot's rule)
            return replace(cfg, upper=DeviceSpec("name", v[5:]), upper_dir="")
        dev, _, path = v.partition(":")
        return replace(cfg, upper=parse_device(dev, "overlayboot.upper"), upper_dir=path.strip("/"))
    if key == "upper.size":
        return replace(cfg, upper_size=parse_size(_need(value, key), "overlayboot.upper.size"))
    if key == "upper.readonly":
        return replace(cfg, upper_readonly=_flag(value, "overlayboot.upper.readonly"))
    if key == "upper.reset":
        return replace(cfg, upper_reset=_flag(value, "overlayboot.upper.reset"))
    warnings.append(f"unknown parameter overlayboot.{key} ignored")
    return cfg


def read_image_conf(path: Path = IMAGE_CONF) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments) baked into the initramfs by the builder."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1].replace("'\\''", "'")
        out[key.strip()] = value
    return out


def image_defaults(conf: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The image's baked-in label and parameters: (defaults, extra command-line text)."""
    defaults: dict[str, str] = {}
    label = conf.get("OVERLAYBOOT_LABEL")
    if label:
        defaults["medium"] = f"LABEL={label}"
    return defaults, conf.get("OVERLAYBOOT_PARAMS", "")


def to_shell(cfg: BootConfig) -> str:
    """``OB_*=...`` assignments for the hooks, safely quoted."""
    values = {
        "OB_MEDIUM_KIND": cfg.medium.kind if cfg.medium else "scan",
        "OB_MEDIUM": cfg.medium.value if cfg.medium else "",
        "OB_IMAGE": cfg.image,
        "OB_FINDISO": cfg.findiso or "",
        "OB_UPPER_KIND": cfg.upper.kind if cfg.upper else "tmpfs",
        "OB_UPPER": cfg.upper.value if cfg.upper else "",
        "OB_UPPER_DIR": cfg.upper_dir,
        "OB_UPPER_SIZE": cfg.upper_size,
        "OB_UPPER_READONLY": "1" if cfg.upper_readonly else "",
        "OB_UPPER_RESET": "1" if cfg.upper_reset else "",
        "OB_TORAM": "1" if cfg.toram else "",
        "OB_CHECK": "1" if cfg.check else "",
        "OB_LAYERS": " ".join(cfg.layers),
        "OB_OVERLAY": cfg.overlay,
        "OB_BLOCK_CHUNK": cfg.block_chunk,
        "OB_BREAK": " ".join(p for p in PHASES + NET_PHASES if p in cfg.breaks),
        "OB_DEBUG": "1" if cfg.debug else "",
        "OB_INIT": cfg.init,
        "OB_TIMEOUT": str(cfg.timeout),
        "OB_ONERROR": cfg.onerror,
        **shell_values(cfg.net),
    }
    lines = [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    for w in cfg.warnings:  # on the console, and in the boot log (hooks/lib.sh)
        line = shlex.quote(f"WARNING: overlayboot: {w}")
        lines += [
            f"echo {line} >&2",
            f'[ -z "${{OB_RUN:-}}" ] || echo {line} >> "$OB_RUN/boot.log"',
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = args[0] if args else Path("/proc/cmdline").read_text()
    defaults, baked = image_defaults(read_image_conf())
    try:
        cfg = parse_cmdline(f"{baked} {text}", defaults)
    except CmdlineError as exc:
        print(f"ERROR: bad kernel command line: {exc.line()}", file=sys.stderr)
        return 1
    sys.stdout.write(to_shell(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
