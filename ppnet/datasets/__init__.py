"""Converters from public recommendation datasets to the parquet click logs ppnet trains on."""
