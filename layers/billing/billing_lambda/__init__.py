"""What every Lambda handler shares: the HTTP resolver and its error mapping, tenancy, config, wiring."""
