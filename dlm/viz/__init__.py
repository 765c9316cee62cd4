"""Reports and plots built from run outputs (config.json, log.jsonl, `dlm eval --json` files), read-only."""
