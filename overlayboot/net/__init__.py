"""Network boot: the client's parameters (a network lower, ``ip=``), fetching an image over
HTTP (whole, or lazily with range requests behind a FUSE file), and the other tools' forms
of these parameters."""
