"""The overlay filesystem: kernel-overlayfs semantics served over FUSE (pyfuse3 + trio).

Modules split the work by kind of operation, as Linux fs/overlayfs does:
``config`` (the layers and their checks), ``sysio`` (syscalls Python lacks),
``whiteout`` (the on-disk format), ``layers`` (read-only lower layers and their
cache), ``lookup`` (resolving a name across layers), ``readdir`` (merged
listings), ``inodes`` (stable inode numbers and the node table), ``copyup``,
``dirops`` (create/remove/rename in the upper), ``operations`` (the only
pyfuse3 handlers) and ``daemon`` (mounting and the main loop).
"""
