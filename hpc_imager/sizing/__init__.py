"""How much one task needs and what that makes of workers and jobs: the estimate, the probe, the plan."""
