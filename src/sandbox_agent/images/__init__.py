"""Images: the userland a payload runs on when it is not the host's.

An image is a directory (an unpacked root, as on CVMFS), a squashfs file or a SIF file.
``select`` picks one for a job, ``kinds`` reads what a file is, ``identity`` names it by
digest, ``prepare`` checks it, holds it to its pin and (``mount``) makes a single file a
directory for bwrap, ``hostpython`` gives the JobWrapper an interpreter inside any of
them, ``inspect`` describes one for a site.
"""


class ImageRefused(ValueError):
    """An image the job must not run on: one line naming it and why. ``node``: the
    cause is this node (no FUSE, no mount point), not the image; ``job``: the job's own
    request (a bind the image has no place for), whoever chose the image."""

    def __init__(self, message: str, *, node: bool = False, job: bool = False) -> None:
        super().__init__(message)
        self.node = node
        self.job = job
