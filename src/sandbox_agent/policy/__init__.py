"""The policy engine: site policies as data, composed with a job's JDL into one effective
policy whose every value says where it came from, explained, linted and diffed."""

from sandbox_agent.policy.compose import EffectivePolicy, compose
from sandbox_agent.policy.load import load_policy, policy_dirs
from sandbox_agent.policy.model import Policy, PolicyError, PolicyRejection, Setting

__all__ = [
    "EffectivePolicy",
    "Policy",
    "PolicyError",
    "PolicyRejection",
    "Setting",
    "compose",
    "load_policy",
    "policy_dirs",
]
