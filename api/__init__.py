"""The usage API and dashboard over the daily rollup."""
