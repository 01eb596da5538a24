"""Sweep specs (``experiments/*.toml``): loading and validation, axis expansion into RunSpecs, config
hashing (``RunSpec.config_hash``) and cost planning. Pure Python: never imports torch, ray or the db."""

from ebt_scaling.sweeps.expand import ExpandedRun, expand
from ebt_scaling.sweeps.locate import experiments_dir, spec_path
from ebt_scaling.sweeps.plan import CostPlan, Resources, format_plan, local_resources, plan_cost
from ebt_scaling.sweeps.spec import SweepSpec, load_spec, parse_spec

__all__ = ["ExpandedRun", "expand", "experiments_dir", "spec_path", "CostPlan", "Resources", "format_plan",
           "local_resources", "plan_cost", "SweepSpec", "load_spec", "parse_spec"]
