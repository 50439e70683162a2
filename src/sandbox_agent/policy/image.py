"""Which image a job runs on, a part of composing its policy, in order: the path its
JDL names (``Image``, only under the site's ``images.roots``), the platform its JDL
asks for (``Platform``, through the site's ``images.platforms``), else the site
default (``filesystem.image``).

A JDL names an image by an absolute path without '..'; the path is judged as the
runtime would follow it: a symlink in it is resolved, and the real path must still lie
under the root it was named under (a link in /cvmfs pointing at /home is refused).
"""

from __future__ import annotations

import os
import posixpath

from sandbox_agent.images.mount import unusable
from sandbox_agent.jdl.expr import Expr, Literal
from sandbox_agent.jdl.spec import JobSpec
from sandbox_agent.policy.model import Policy, PolicyRejection, Setting, within
from sandbox_agent.policy.reach import Deny, PathRefused, judge

IMAGE_KEY = "Image"
PLATFORM_KEY = "Platform"


def _asked(spec: JobSpec, key: str) -> str | None:
    node: Expr | None = next((v for k, v in spec.extra if k.casefold() == key.casefold()), None)
    if node is None:
        return None
    if not (isinstance(node, Literal) and isinstance(node.value, str)):
        raise PolicyRejection(f"{key} must be a string")
    return node.value


def choose(policy: Policy, spec: JobSpec, deny: Deny) -> Setting | None:
    """The job's own choice of image, checked; None when it makes none. ``deny``: what
    no image may be at, under or above (the agent's credentials among them), judged as
    every path a user names is (policy.reach)."""
    path = _asked(spec, IMAGE_KEY)
    if path is not None:
        real = by_path(policy, path)
        try:
            judge(real, None, deny, key=IMAGE_KEY, named=path, base=None, whole_tree=True)
        except PathRefused as exc:
            raise PolicyRejection(str(exc)) from None
        return Setting(real, f"jdl:{IMAGE_KEY}")
    platform = _asked(spec, PLATFORM_KEY)
    if platform is not None:
        return by_platform(policy, platform)
    return None


def by_path(policy: Policy, path: str) -> str:
    roots = [str(i.value) for i in policy["images.roots"].value]
    if not roots:
        raise PolicyRejection(f"{IMAGE_KEY}: this site lets no job name its image (images.roots "
                              f"is empty); ask for a {PLATFORM_KEY}, or for none")  # fmt: skip
    if (not path.startswith("/") or ".." in path.split("/") or not path.isprintable()
            or "," in path):  # fmt: skip
        raise PolicyRejection(f"{IMAGE_KEY}: '{path:.80}' must be an absolute path without "
                              "'..', ',' or control characters")  # fmt: skip
    path = posixpath.normpath(path)
    root = next((r for r in roots if within(path, r)), None)
    if root is None:
        raise PolicyRejection(f"{IMAGE_KEY}: '{path:.80}' is not under an image root this site "
                              f"allows ({', '.join(roots)})")  # fmt: skip
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if not within(real, real_root):
        raise PolicyRejection(f"{IMAGE_KEY}: '{path:.80}' leads through a symlink to "
                              f"{real:.80}, outside the image root {root}")  # fmt: skip
    if real == real_root:  # the root holds images; it is none (and hashing it is unbounded)
        raise PolicyRejection(f"{IMAGE_KEY}: '{path:.80}' is the image root {root} itself; "
                              "name one image under it")  # fmt: skip
    if not os.path.exists(real):
        raise PolicyRejection(f"{IMAGE_KEY}: '{path:.80}' does not exist on this node")
    if not os.path.isdir(real):
        why = unusable()
        if why is not None:  # another node may mount it: not matched here, never failed
            raise PolicyRejection(f"{IMAGE_KEY}: '{path:.80}' is a single-file image, which "
                                  f"this node cannot mount ({why})")  # fmt: skip
    return real


def by_platform(policy: Policy, platform: str) -> Setting:
    known = {str(i.value[0]).casefold(): i for i in policy["images.platforms"].value}
    item = known.get(platform.casefold())
    if item is None:
        offered = ", ".join(str(i.value[0]) for i in policy["images.platforms"].value)
        raise PolicyRejection(f"{PLATFORM_KEY}: this site has no image for '{platform:.40}' "
                              f"(it offers: {offered or 'none'})")  # fmt: skip
    return Setting(str(item.value[1]), f"jdl:{PLATFORM_KEY} {item.value[0]} ({item.origin})")
