"""A redundant pair of appliances (docs/ha.md): the `ha:` section (config.py), keepalived's
generated configuration (keepalived.py), the decisions (policy.py, sans-I/O), the
supervisor that carries them out (supervisor.py: `concentrator ha`, `ha-status`), its
status (state.py) and the kernel's TCP table for the BMI's nudge (tcp.py)."""
