"""Block-level copy-on-write over a read-only base: a store of changed chunks, and a FUSE
device (one file) that shows base + changes, for a loop device on top.

``format`` (bytes of the store), ``identity`` (which base a store belongs to), ``index``
(chunk -> slot, double-buffered pages), ``slots`` (which data slots are free), ``store``
(reads, writes and commits), ``device`` (the pyfuse3 handlers), ``daemon`` (mount and
serve), ``loop`` (losetup), ``manage`` (create, info, merge, reset), ``cli``.
"""
