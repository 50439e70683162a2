"""Images: the userland a payload runs on when it is not the host's.

An image is a directory (an unpacked root, as on CVMFS), a squashfs file or a SIF file.
``select`` picks one for a job, ``identity`` names it by digest, ``checks`` refuses
what others could change under us, ``mount`` makes a single-file image a directory for
bwrap, ``hostpython`` gives the JobWrapper an interpreter inside any of them.
"""


class ImageRefused(ValueError):
    """An image the job must not run on: one line naming it and why."""
