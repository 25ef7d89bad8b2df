"""Reading helpers, the Parquet writer and the commit protocol."""
