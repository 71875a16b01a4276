"""Decision: incidents -> alerts and planned remediation, by the rules in ``rules/*.yaml``."""

from aiops.decide.engine import Decider
from aiops.decide.rules import Rules, RulesError, load_rules, parse_rules

__all__ = ["Decider", "Rules", "RulesError", "load_rules", "parse_rules"]
