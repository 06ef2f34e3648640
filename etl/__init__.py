"""The nightly rollup of billable conversations into `usage_daily`."""
